"""What a promise can do: its ``type`` and the work behind it. Work must be short and pure
enough to run again after a crash (its result is recorded once either way).

The built-ins are ``echo``, ``sum``, ``llm`` and ``fail``; ``PROMISE_KINDS`` adds plug-in kinds
(``name=package.module:factory``, the factory called with the settings returns a
:class:`PromiseKind`), loaded once per process by :func:`promise_kinds` and checked when a
worker or the API starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, StrictFloat, StrictInt

from jobs.errors import InvalidWork
from jobs.params import JsonInt, checked_params
from jobs.plugins import load_kinds

#: ``(owner, prompt) -> text``
AskAI = Callable[[str, str], str]
#: ``work(params, parents' results by id, ask, owner) -> result`` (JSON-serialisable).
Work = Callable[[dict[str, Any], dict[str, Any], AskAI, str], Any]


class WorkFailed(Exception):
    """The promise's work reported a failure (retried, then recorded as the error)."""


class PromiseParams(BaseModel):
    """What every promise accepts; a kind's params model extends it."""

    delay_ms: JsonInt = Field(default=0, ge=0, le=60_000,
                                description="Sleep before the work (for trying out).")


class EchoParams(PromiseParams):
    text: Any = ""


class SumParams(PromiseParams):
    value: StrictInt | StrictFloat = 0


class LLMParams(PromiseParams):
    prompt: Any = ""


class FailParams(PromiseParams):
    reason: Any = "this promise always fails"


@dataclass(frozen=True)
class PromiseKind:
    name: str
    work: Work
    #: The accepted ``params``: checks a request and describes it in the OpenAPI document.
    params_model: type[PromiseParams] = PromiseParams


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


BUILT_IN_KINDS: dict[str, PromiseKind] = {kind.name: kind for kind in (
    PromiseKind("echo", echo, EchoParams), PromiseKind("sum", total, SumParams),
    PromiseKind("llm", llm, LLMParams), PromiseKind("fail", fail, FailParams))}


def _checked(name: str, kind: Any) -> PromiseKind:
    if not isinstance(kind, PromiseKind):
        raise TypeError(f"the factory returned {kind!r}, not a promises.kinds.PromiseKind")
    if kind.name != name:
        raise ValueError(f"the kind's name is {kind.name!r}, not {name!r}")
    if not callable(kind.work):
        raise ValueError("the kind's work is not callable")
    if not (isinstance(kind.params_model, type) and issubclass(kind.params_model, PromiseParams)):
        raise ValueError("the kind's params_model does not extend promises.kinds.PromiseParams")
    return kind


_kinds: dict[str, PromiseKind] | None = None


def promise_kinds() -> dict[str, PromiseKind]:
    """The built-in kinds and the ``PROMISE_KINDS`` plug-ins, loaded once per process."""
    global _kinds
    if _kinds is None:
        import celeryconfig

        settings = celeryconfig.settings
        _kinds = load_kinds("PROMISE_KINDS", settings.promise_kinds, settings,
                            built_in=BUILT_IN_KINDS, check=_checked)
    return _kinds


def check_params(kind: str, params: Any) -> dict[str, Any]:
    """``params`` if the kind accepts them (kept as given: the work reads what it needs)."""
    kinds = promise_kinds()
    if kind not in kinds:
        raise InvalidWork("type", f"must be one of {sorted(kinds)}, got {kind!r}")
    checked_params(kinds[kind].params_model, params)
    return params  # type: ignore[no-any-return]
