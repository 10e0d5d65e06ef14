"""An AI handler that fails at random, for the chaos suite (``AI_HANDLER=chaos.handlers:flaky``).

``CHAOS_FAILURE_RATE`` (0..1) and ``CHAOS_MAX_LATENCY_MS`` are knobs of this test tool only,
read here because they are no setting of the service itself.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from services.ai.base import HandlerUnavailable, Turn
from services.ai.offline import OfflineResponder


class FlakyResponder(OfflineResponder):
    """The offline responder with random latency that raises HandlerUnavailable now and then."""

    def __init__(self, settings: Any, *, failure_rate: float, max_latency_ms: int) -> None:
        super().__init__(settings, latency_ms=0)
        self.failure_rate = failure_rate
        self.max_latency_s = max_latency_ms / 1000.0
        self.rng = random.Random()

    def reply(self, user_id: str, text: str, history: list[Turn]) -> str:
        time.sleep(self.rng.uniform(0, self.max_latency_s))
        if self.rng.random() < self.failure_rate:
            raise HandlerUnavailable(f"chaos: injected failure answering {user_id}")
        return super().reply(user_id, text, history)


def flaky(settings: Any) -> FlakyResponder:
    return FlakyResponder(settings,
                          failure_rate=float(os.environ.get("CHAOS_FAILURE_RATE", "0")),
                          max_latency_ms=int(os.environ.get("CHAOS_MAX_LATENCY_MS", "20")))
