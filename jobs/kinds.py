"""The job kinds: what one item of work is, and the state carried from item to item.

A kind is deterministic over its parameters: item ``i`` is the same whichever run processes it,
so a run that resumes from a checkpoint computes exactly what an uninterrupted run would.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from jobs.errors import InvalidWork

#: ``reply(owner, prompt) -> text``: the AI handler as a job sees it.
AskAI = Callable[[str, str], str]

CITIES = ("Lisbon", "Porto", "Braga", "Faro", "Coimbra")
MAX_ITEMS = 1_000_000


class JobKind(Protocol):
    name: str
    #: Celery task name; its prefix picks the workload queue (routing.queues.WORKLOAD_ROUTES).
    task_name: str

    def validate(self, params: dict[str, Any]) -> dict[str, Any]: ...
    def total(self, params: dict[str, Any]) -> int: ...
    def item_id(self, params: dict[str, Any], index: int) -> str: ...
    def initial_state(self, params: dict[str, Any]) -> dict[str, Any]: ...
    def process(self, params: dict[str, Any], index: int, state: dict[str, Any],
                ask: AskAI, owner: str) -> None: ...
    def result(self, params: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]: ...


def _int_param(params: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidWork(f"params.{name}", f"must be an integer in {lo}..{hi}, got {value!r}")
    return value


def _pause(params: dict[str, Any]) -> None:
    delay = params.get("item_delay_ms", 0)
    if delay:
        time.sleep(delay / 1000.0)


class Profiling:
    """Data-profiling rules: per-column count, nulls, min, max, mean, std over generated rows."""

    name = "profiling"
    task_name = "shardline.jobs.profiling.run"

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"rows": _int_param(params, "rows", 1000, 1, MAX_ITEMS),
                "seed": _int_param(params, "seed", 1, 0, 2**31),
                "item_delay_ms": _int_param(params, "item_delay_ms", 0, 0, 10_000)}

    def total(self, params: dict[str, Any]) -> int:
        return int(params["rows"])

    def item_id(self, params: dict[str, Any], index: int) -> str:
        return f"row-{index}"

    @staticmethod
    def row(seed: int, index: int) -> dict[str, Any]:
        rng = random.Random(f"{seed}:{index}")
        return {"age": None if rng.random() < 0.05 else rng.randint(18, 90),
                "income": round(rng.gauss(30000, 8000), 2),
                "city": rng.choice(CITIES)}

    def initial_state(self, params: dict[str, Any]) -> dict[str, Any]:
        numeric = {"count": 0, "nulls": 0, "sum": 0.0, "sumsq": 0.0, "min": None, "max": None}
        return {"age": dict(numeric), "income": dict(numeric), "city": {}}

    def process(self, params: dict[str, Any], index: int, state: dict[str, Any],
                ask: AskAI, owner: str) -> None:
        _pause(params)
        row = self.row(params["seed"], index)
        for column in ("age", "income"):
            stats, value = state[column], row[column]
            if value is None:
                stats["nulls"] += 1
                continue
            stats["count"] += 1
            stats["sum"] += value
            stats["sumsq"] += value * value
            stats["min"] = value if stats["min"] is None else min(stats["min"], value)
            stats["max"] = value if stats["max"] is None else max(stats["max"], value)
        state["city"][row["city"]] = state["city"].get(row["city"], 0) + 1

    def result(self, params: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": params["rows"], "city": state["city"]}
        for column in ("age", "income"):
            s = state[column]
            mean = s["sum"] / s["count"] if s["count"] else None
            var = s["sumsq"] / s["count"] - mean * mean if mean is not None else None
            out[column] = {"count": s["count"], "nulls": s["nulls"], "min": s["min"],
                           "max": s["max"], "mean": None if mean is None else round(mean, 4),
                           "std": None if var is None else round(math.sqrt(max(var, 0.0)), 4)}
        return out


class LLMBatch:
    """LLM batch processing: the configured AI handler answers each prompt, in order."""

    name = "llm"
    task_name = "shardline.jobs.llm.run"

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        prompts = params.get("prompts")
        if (not isinstance(prompts, list) or not prompts or len(prompts) > 10_000
                or not all(isinstance(p, str) and p for p in prompts)):
            raise InvalidWork("params.prompts", "must be a list of 1..10000 non-empty strings")
        return {"prompts": prompts,
                "item_delay_ms": _int_param(params, "item_delay_ms", 0, 0, 10_000)}

    def total(self, params: dict[str, Any]) -> int:
        return len(params["prompts"])

    def item_id(self, params: dict[str, Any], index: int) -> str:
        return f"prompt-{index}"

    def initial_state(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"replies": []}

    def process(self, params: dict[str, Any], index: int, state: dict[str, Any],
                ask: AskAI, owner: str) -> None:
        _pause(params)
        state["replies"].append(ask(owner, params["prompts"][index]))

    def result(self, params: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        return {"replies": state["replies"]}


KINDS: dict[str, JobKind] = {kind.name: kind for kind in (Profiling(), LLMBatch())}


def kind_named(name: str) -> JobKind:
    try:
        return KINDS[name]
    except KeyError:
        raise InvalidWork("kind", f"must be one of {sorted(KINDS)}, got {name!r}") from None
