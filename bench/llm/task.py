"""The threads-pool systems' tasks: a simulated LLM call (``AI_LATENCY_MS`` of sleep), then
the reply appended to the user's outbox and to the outbox feed, as the real commit does
(``services.conversation``), so one order check and one clock serve every system.

(b) is the usual fix people reach for: a Redis lock per user (``SET NX`` with an expiry,
redis-py's :class:`redis.lock.Lock`), and a task that finds its user's lock taken retries
through the broker a moment later. It never waits in the worker, so one busy user does not hold
a pool thread; the bench counts how often the order breaks all the same.
"""

from __future__ import annotations

import functools
import time

import redis
from celery import Task

import celeryconfig
from bench.llm.names import LOCKED_REPLY, REPLY
from routing import keys
from services.redis_client import connect
from tasks.app import app

#: Countdown of a retry when the user's lock is taken.
LOCK_RETRY_S = 0.05
#: Expiry of a user's lock: longer than any reply, so only a dead worker's lock expires.
LOCK_TTL_S = 30


@functools.cache
def _redis() -> redis.Redis:
    """One client (one connection pool, safe to share) for the pool's threads: the service
    registry starts on ``worker_process_init``, which a threads pool never sends."""
    return connect(str(celeryconfig.broker_url))


def _lock_key(user: str) -> str:
    return f"{keys.PREFIX}bench:user-lock:{user}"


def _answer(user: str, seq: int, sent_at: float) -> None:
    # ``started_at`` lets the bench count overlaps: a user's message started before their
    # previous reply was written (the replies may still land in order by luck of timing).
    started_at = time.time()
    time.sleep(celeryconfig.settings.ai_latency_ms / 1000.0)
    client = _redis()
    with client.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.outbox(user), {"seq": seq, "sent_at": sent_at, "started_at": started_at,
                                      "delivered_at": time.time()})
        pipe.xadd(keys.OUTBOX_FEED, {"user": user})
        pipe.execute()


@app.task(name=REPLY, ignore_result=True)
def reply(user: str, seq: int, sent_at: float) -> None:
    _answer(user, seq, sent_at)


@app.task(name=LOCKED_REPLY, bind=True, ignore_result=True, max_retries=None)
def locked_reply(self: Task, user: str, seq: int, sent_at: float) -> None:
    lock = _redis().lock(_lock_key(user), timeout=LOCK_TTL_S, blocking=False)
    if not lock.acquire():
        raise self.retry(countdown=LOCK_RETRY_S)
    try:
        _answer(user, seq, sent_at)
    finally:
        lock.release()
