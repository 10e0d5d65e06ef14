"""AI handlers the tests load into real workers through ``AI_HANDLER``."""

from __future__ import annotations

import random
import time
from typing import Any

from services.ai.offline import OfflineResponder


class RandomLatency(OfflineResponder):
    """The offline responder with a random 0..MAX ms delay per message."""

    def __init__(self, settings: Any, max_ms: int = 40) -> None:
        super().__init__(settings, latency_ms=0)
        self.max_ms = max_ms
        self.rng = random.Random()

    def reply(self, user_id: str, text: str, history: list[Any]) -> str:
        time.sleep(self.rng.uniform(0, self.max_ms) / 1000.0)
        return super().reply(user_id, text, history)


def random_latency(settings: Any) -> RandomLatency:
    return RandomLatency(settings)
