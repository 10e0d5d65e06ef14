"""AI handlers the bench loads into its workers through ``AI_HANDLER``."""

from __future__ import annotations

import time
from typing import Any

from services.ai.base import Turn
from services.ai.offline import OfflineResponder

#: Users whose id starts with this are slow: each of their messages takes ``AI_LATENCY_MS``.
SLOW_PREFIX = "slow"


class SlowUsers(OfflineResponder):
    """The offline responder with ``AI_LATENCY_MS`` for slow users only (a long LLM answer,
    a tool call) and no latency for everyone else: head-of-line blocking made visible."""

    def __init__(self, settings: Any) -> None:
        super().__init__(settings, latency_ms=0)
        self.slow_s = max(getattr(settings, "ai_latency_ms", 0), 0) / 1000.0

    def reply(self, user_id: str, text: str, history: list[Turn]) -> str:
        if str(user_id).startswith(SLOW_PREFIX):
            time.sleep(self.slow_s)
        return super().reply(user_id, text, history)
