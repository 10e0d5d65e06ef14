"""The AI handler contract and the loader for ``AI_HANDLER``."""

from __future__ import annotations

import importlib
from typing import Any, Protocol, TypedDict


class Turn(TypedDict):
    """One stored conversation turn."""

    role: str  # "user" or "assistant"
    text: str


class AIHandler(Protocol):
    def reply(self, user_id: str, text: str, history: list[Turn]) -> str:
        """The assistant's answer to ``text`` given the user's ``history`` (oldest first)."""
        ...


class HandlerUnavailable(Exception):
    """The AI backend did not answer (network, HTTP 5xx, timeout): worth retrying."""


def load_handler(spec: str, settings: Any) -> AIHandler:
    """Build the handler named by ``spec`` (``package.module:factory``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"AI_HANDLER must look like 'package.module:factory', got {spec!r}")
    factory = getattr(importlib.import_module(module_name), attr)
    handler = factory(settings)
    if not callable(getattr(handler, "reply", None)):
        raise TypeError(f"AI_HANDLER {spec!r} returned {handler!r}, which has no reply() method")
    return handler
