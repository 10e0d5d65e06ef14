"""What a promise can do: its ``type`` and the work behind it. Work must be short and pure
enough to run again after a crash (its result is recorded once either way)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from jobs.errors import InvalidWork

#: ``(owner, prompt) -> text``
AskAI = Callable[[str, str], str]


class WorkFailed(Exception):
    """The promise's work reported a failure (retried, then recorded as the error)."""


def _delay(params: dict[str, Any]) -> None:
    if params.get("delay_ms"):
        time.sleep(params["delay_ms"] / 1000.0)


def echo(params: dict[str, Any], parents: dict[str, Any], ask: AskAI, owner: str) -> Any:
    """Returns ``params.text``."""
    _delay(params)
    return params.get("text", "")


def total(params: dict[str, Any], parents: dict[str, Any], ask: AskAI, owner: str) -> Any:
    """``params.value`` plus the numeric results of every parent: data flows down the DAG."""
    _delay(params)
    return params.get("value", 0) + sum(v for v in parents.values() if isinstance(v, int | float))


def llm(params: dict[str, Any], parents: dict[str, Any], ask: AskAI, owner: str) -> Any:
    """The AI handler's answer to ``params.prompt``."""
    _delay(params)
    return ask(owner, str(params.get("prompt", "")))


def fail(params: dict[str, Any], parents: dict[str, Any], ask: AskAI, owner: str) -> Any:
    """Always fails (for trying out failure policies)."""
    _delay(params)
    raise WorkFailed(str(params.get("reason", "this promise always fails")))


WORK: dict[str, Callable[[dict[str, Any], dict[str, Any], AskAI, str], Any]] = {
    "echo": echo, "sum": total, "llm": llm, "fail": fail,
}


def check_params(kind: str, params: Any) -> dict[str, Any]:
    if kind not in WORK:
        raise InvalidWork("type", f"must be one of {sorted(WORK)}, got {kind!r}")
    if not isinstance(params, dict):
        raise InvalidWork("params", f"must be an object, got {type(params).__name__}")
    delay = params.get("delay_ms", 0)
    if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= 60_000:
        raise InvalidWork("params.delay_ms", f"must be an integer 0..60000, got {delay!r}")
    if kind == "sum" and not isinstance(params.get("value", 0), int | float):
        raise InvalidWork("params.value", "must be a number")
    return params
