"""Plug-in work kinds defined outside shardline, for tests/test_plugin_kinds.py.

Loaded through ``JOB_KINDS=wordcount=tests.plugin_kinds:word_count`` and
``PROMISE_KINDS=shout=tests.plugin_kinds:shout``, as a deployment's own kinds would be.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, StrictStr

from jobs.kinds import AskAI
from jobs.params import checked_params
from promises.kinds import AskAI as PromiseAskAI
from promises.kinds import PromiseKind, PromiseParams


class WordCountParams(BaseModel):
    words: list[StrictStr] = Field(min_length=1, max_length=1000)


class WordCount:
    """Letters per word, summed: one item per word."""

    name = "wordcount"
    # No workload route for this prefix: the job runs on the ``default`` queue.
    task_name = "tests.jobs.wordcount.run"
    params_model: type[BaseModel] = WordCountParams

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        return checked_params(self.params_model, params).model_dump()

    def total(self, params: dict[str, Any]) -> int:
        return len(params["words"])

    def item_id(self, params: dict[str, Any], index: int) -> str:
        return f"word-{index}"

    def initial_state(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"letters": 0}

    def process(self, params: dict[str, Any], index: int, state: dict[str, Any],
                ask: AskAI, owner: str) -> None:
        state["letters"] += len(params["words"][index])

    def result(self, params: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        return {"words": len(params["words"]), "letters": state["letters"]}


def word_count(settings: Any) -> WordCount:
    return WordCount()


class ShoutParams(PromiseParams):
    text: StrictStr = Field(min_length=1)


def _shout(params: dict[str, Any], parents: dict[str, Any], ask: PromiseAskAI,
           owner: str) -> Any:
    """``params.text`` in capitals."""
    return params["text"].upper() + "!"


def shout(settings: Any) -> PromiseKind:
    return PromiseKind("shout", _shout, ShoutParams)


def not_a_kind(settings: Any) -> object:
    return object()
