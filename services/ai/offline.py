"""The default AI handler: deterministic, no network, optional simulated latency."""

from __future__ import annotations

import time
from typing import Any

from services.ai.base import Turn


class OfflineResponder:
    """Answers from the message itself, so a reply can be checked against what was sent."""

    def __init__(self, settings: Any = None, *, latency_ms: int | None = None) -> None:
        if latency_ms is None:
            latency_ms = getattr(settings, "ai_latency_ms", 0)
        self.latency_s = max(latency_ms, 0) / 1000.0

    def reply(self, user_id: str, text: str, history: list[Turn]) -> str:
        if self.latency_s:
            time.sleep(self.latency_s)
        turn = sum(1 for t in history if t["role"] == "user") + 1
        return f"re: {text} (turn {turn})"
