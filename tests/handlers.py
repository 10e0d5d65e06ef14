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


#: Text prefix that makes the gated handler wait: ``"gate:<redis key>"``.
GATE_PREFIX = "gate:"
#: How long a gated message waits at most for its key (a hang guard, not a timing).
GATE_GUARD_S = 300.0


class Gated(OfflineResponder):
    """The offline responder (``AI_LATENCY_MS`` as configured) that, on a message whose text
    is ``gate:<key>``, waits until the Redis key exists: a test holds a shard busy for
    exactly as long as it needs, then opens the gate by setting the key."""

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        import redis

        self.redis = redis.Redis.from_url(settings.redis_url, decode_responses=True)

    def reply(self, user_id: str, text: str, history: list[Any]) -> str:
        if text.startswith(GATE_PREFIX):
            key, deadline = text[len(GATE_PREFIX):], time.monotonic() + GATE_GUARD_S
            while not self.redis.exists(key) and time.monotonic() < deadline:
                time.sleep(0.05)
        return super().reply(user_id, text, history)


def gated(settings: Any) -> Gated:
    return Gated(settings)


class ExpensiveComponent:
    """A stand-in for a heavy client (model, connection pool): counts its own builds."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings


def expensive_component(settings: Any) -> ExpensiveComponent:
    return ExpensiveComponent(settings)


def broken_component(settings: Any) -> Any:
    raise ConnectionError("vector store at 127.0.0.1:1 refused the connection")


#: Set of message texts the flaky handler fails on (tests add and remove members).
FAIL_TEXTS = "test:ai:fail-texts"
#: While this key exists the flaky handler fails on every message.
FAIL_ALL = "test:ai:fail-all"
#: Counter of the flaky handler's calls.
CALLS = "test:ai:calls"


class Flaky(OfflineResponder):
    """The offline responder, failing (HandlerUnavailable) as the test says in Redis."""

    def __init__(self, settings: Any) -> None:
        super().__init__(settings, latency_ms=0)
        import redis

        self.redis = redis.Redis.from_url(settings.redis_url, decode_responses=True)

    def reply(self, user_id: str, text: str, history: list[Any]) -> str:
        from services.ai.base import HandlerUnavailable

        self.redis.incr(CALLS)
        if self.redis.exists(FAIL_ALL) or self.redis.sismember(FAIL_TEXTS, text):
            raise HandlerUnavailable(f"test says fail on {text!r}")
        return super().reply(user_id, text, history)


def flaky(settings: Any) -> Flaky:
    return Flaky(settings)
