"""The job kinds: what one item of work is, and the state carried from item to item.

A kind is deterministic over its parameters: item ``i`` is the same whichever run processes it,
so a run that resumes from a checkpoint computes exactly what an uninterrupted run would.

The built-ins are ``profiling`` and ``llm``; ``JOB_KINDS`` adds plug-in kinds
(``name=package.module:factory``, the factory called with the settings returns a
:class:`JobKind`), loaded once per process by :func:`job_kinds` and checked when a worker or
the API starts.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, Field, StrictStr

from jobs.errors import InvalidWork
from jobs.params import JsonInt, checked_params
from jobs.plugins import load_kinds
from routing.queues import DEFAULT_QUEUE, workload_queue_for

#: ``reply(owner, prompt) -> text``: the AI handler as a job sees it.
AskAI = Callable[[str, str], str]

CITIES = ("Lisbon", "Porto", "Braga", "Faro", "Coimbra")
MAX_ITEMS = 1_000_000


class JobKind(Protocol):
    name: str
    #: Celery task name; its prefix picks the workload queue (routing.queues.WORKLOAD_ROUTES),
    #: any other name runs on the ``default`` queue.
    task_name: str
    #: The accepted ``params``: checks a request and describes it in the OpenAPI document.
    params_model: type[BaseModel]

    def validate(self, params: dict[str, Any]) -> dict[str, Any]: ...
    def total(self, params: dict[str, Any]) -> int: ...
    def item_id(self, params: dict[str, Any], index: int) -> str: ...
    def initial_state(self, params: dict[str, Any]) -> dict[str, Any]: ...
    def process(self, params: dict[str, Any], index: int, state: dict[str, Any],
                ask: AskAI, owner: str) -> None: ...
    def result(self, params: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]: ...




class ProfilingParams(BaseModel):
    rows: JsonInt = Field(default=1000, ge=1, le=MAX_ITEMS)
    seed: JsonInt = Field(default=1, ge=0, le=2**31)
    item_delay_ms: JsonInt = Field(default=0, ge=0, le=10_000,
                                   description="Sleep before each item (for trying out).")


class LLMParams(BaseModel):
    prompts: list[Annotated[StrictStr, Field(min_length=1)]] = Field(min_length=1,
                                                                     max_length=10_000)
    item_delay_ms: JsonInt = Field(default=0, ge=0, le=10_000,
                                   description="Sleep before each item (for trying out).")


def _pause(params: dict[str, Any]) -> None:
    delay = params.get("item_delay_ms", 0)
    if delay:
        time.sleep(delay / 1000.0)


class Profiling:
    """Data-profiling rules: per-column count, nulls, min, max, mean, std over generated rows."""

    name = "profiling"
    task_name = "shardline.jobs.profiling.run"
    params_model: type[BaseModel] = ProfilingParams

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        return checked_params(self.params_model, params).model_dump()

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
    params_model: type[BaseModel] = LLMParams

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        return checked_params(self.params_model, params).model_dump()

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


BUILT_IN_KINDS: dict[str, JobKind] = {kind.name: kind for kind in (Profiling(), LLMBatch())}

_METHODS = ("validate", "total", "item_id", "initial_state", "process", "result")


def _checked(name: str, kind: Any) -> JobKind:
    if getattr(kind, "name", None) != name:
        raise ValueError(f"the kind's name is {getattr(kind, 'name', None)!r}, not {name!r}")
    if not isinstance(getattr(kind, "task_name", None), str) or not kind.task_name:
        raise ValueError("the kind has no task_name (the Celery task name its jobs run as)")
    model = getattr(kind, "params_model", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ValueError("the kind's params_model is not a pydantic model class")
    missing = [m for m in _METHODS if not callable(getattr(kind, m, None))]
    if missing:
        raise ValueError(f"the kind lacks the methods {missing}")
    return kind  # type: ignore[no-any-return]


_kinds: dict[str, JobKind] | None = None


def job_kinds() -> dict[str, JobKind]:
    """The built-in kinds and the ``JOB_KINDS`` plug-ins, loaded once per process."""
    global _kinds
    if _kinds is None:
        import celeryconfig

        settings = celeryconfig.settings
        _kinds = load_kinds("JOB_KINDS", settings.job_kinds, settings,
                            built_in=BUILT_IN_KINDS, check=_checked)
    return _kinds


def queue_of(kind: JobKind) -> str:
    """The workload queue the kind's jobs wait in."""
    # A plug-in kind's task without a workload route goes where Celery sends unrouted tasks.
    return workload_queue_for(kind.task_name) or DEFAULT_QUEUE


def kind_named(name: str) -> JobKind:
    kinds = job_kinds()
    try:
        return kinds[name]
    except KeyError:
        raise InvalidWork("kind", f"must be one of {sorted(kinds)}, got {name!r}") from None
