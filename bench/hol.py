"""Head-of-line blocking: a fast user who shares a shard with a slow user waits behind the
slow user's tasks, because a shard runs one task at a time in arrival order.

Method. Two shards, one solo worker each, the :class:`bench.handlers.SlowUsers` handler: the
slow user's messages take ``AI_LATENCY_MS`` (2 s), everyone else's are instant. Live traffic,
not a backlog: for ``duration_s`` the slow user (shard 0) sends a message every
``slow_every_s`` and two fast users, one on shard 0 and one on shard 1, each send one every
``fast_every_s``. Each message is stamped ``sent_at`` right before it is published; the worker
stamps ``delivered_at`` when it commits the reply. Latency = delivered_at - sent_at (one
machine, one clock).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from celery import Celery

from bench.handlers import SLOW_PREFIX
from cli.chatload import check_order, delivered_count
from routing import ChatMessage, send, shard_for

Check = Callable[[], None]

SLOW_MS = 2000
DURATION_S = 20.0
SLOW_EVERY_S = 2.5
FAST_EVERY_S = 0.2
DRAIN_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class HolUsers:
    slow: str
    fast_same_shard: str
    fast_other_shard: str


@dataclass(frozen=True)
class HolResult:
    users: HolUsers
    duration_s: float
    slow_every_s: float
    fast_every_s: float
    #: user -> send-to-delivery latencies (s), in send order
    latencies_s: dict[str, list[float]]
    order_ok: bool


def pick_users(shard_count: int) -> HolUsers:
    """The slow user and a fast user on shard 0, a fast user on shard 1."""
    def first(prefix: str, shard: int) -> str:
        return next(f"{prefix}-{n}" for n in range(10_000)
                    if shard_for(f"{prefix}-{n}", shard_count) == shard)

    return HolUsers(slow=first(SLOW_PREFIX, 0), fast_same_shard=first("fast", 0),
                    fast_other_shard=first("fast", 1))


def _send(app: Celery, user: str, seq: int) -> None:
    send(app, ChatMessage(user, f"message {seq} from {user}", message_id=f"{user}-{seq}",
                          sent_at=time.time(), extra={"seq": seq}))


def measure_hol(app: Celery, client: redis.Redis, users: HolUsers, alive: Check, *,
                duration_s: float = DURATION_S, slow_every_s: float = SLOW_EVERY_S,
                fast_every_s: float = FAST_EVERY_S) -> HolResult:
    sent = {users.slow: 0, users.fast_same_shard: 0, users.fast_other_shard: 0}
    start = time.monotonic()
    next_slow, next_fast = start, start + fast_every_s / 2
    while (now := time.monotonic()) < start + duration_s:
        if now >= next_slow:
            _send(app, users.slow, sent[users.slow])
            sent[users.slow] += 1
            next_slow += slow_every_s
        if now >= next_fast:
            for user in (users.fast_same_shard, users.fast_other_shard):
                _send(app, user, sent[user])
                sent[user] += 1
            next_fast += fast_every_s
        time.sleep(max(min(next_slow, next_fast) - time.monotonic(), 0.0))

    total = sum(sent.values())
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while delivered_count(client) < total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"head-of-line run: replies missing after {DRAIN_TIMEOUT_S}s")
        alive()
        time.sleep(0.05)

    latencies: dict[str, list[float]] = {}
    order_ok = True
    for user, count in sent.items():
        report = check_order(client, {user: count})
        order_ok = order_ok and report.ok
        latencies[user] = report.latencies_s
    return HolResult(users=users, duration_s=duration_s, slow_every_s=slow_every_s,
                     fast_every_s=fast_every_s, latencies_s=latencies, order_ok=order_ok)
