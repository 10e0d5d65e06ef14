"""Publish rate: Celery's ``apply_async`` one message at a time vs ``routing.dispatch_batch``.

The baseline is what a producer without shardline's dispatch does: ``send_task`` (what
``apply_async`` calls) through the router, one message per round trip. Both publish the same
messages (same users, same shard queues) to a private Redis with no worker; the batch also
claims each message id and numbers each message. Each run uses its own message ids (the
producer drops a repeated (user, message id)). After a
short warm-up (connection, queue bindings, router) the two alternate for ``rounds`` rounds,
so load from anything else on the machine falls on both alike; the clock runs only around
the publishing calls and every message is checked to be in its queue.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis
from celery import Celery

from bench.load import chunks, retagged
from routing import ChatMessage, dispatch_batch

WARMUP = 50


@dataclass(frozen=True)
class PublishResult:
    messages: int
    batch_size: int
    plain_seconds: list[float]
    batched_seconds: list[float]

    @property
    def plain_rate(self) -> float:
        return self.messages / statistics.median(self.plain_seconds)

    @property
    def batched_rate(self) -> float:
        return self.messages / statistics.median(self.batched_seconds)

    @property
    def ratio(self) -> float:
        """Median over rounds of (plain time / batched time) of the same round."""
        return statistics.median(p / b for p, b in zip(self.plain_seconds,
                                                       self.batched_seconds, strict=True))


def _apply_async(app: Celery, message: ChatMessage) -> None:
    app.send_task(message.task_name, args=(message.user_id, message.text),
                  kwargs=message.task_kwargs())


def _timed(client: redis.Redis, queues: Sequence[str], expected: int,
           publish: Callable[[], None]) -> float:
    start = time.perf_counter()
    publish()
    elapsed = time.perf_counter() - start
    queued = sum(int(client.llen(q)) for q in queues)
    if queued != expected:
        raise RuntimeError(f"{queued} of {expected} published messages are in their queues")
    # Empty the queues only: FLUSHALL would also drop kombu's queue bindings, which the
    # producer declared once and does not declare again.
    client.delete(*queues)
    return elapsed


def measure_publish(app: Celery, client: redis.Redis, queues: Sequence[str],
                    messages: Sequence[ChatMessage], batch_size: int,
                    rounds: int) -> PublishResult:
    for message in retagged(messages[:WARMUP], "warm-plain"):
        _apply_async(app, message)
    dispatch_batch(app, retagged(messages[:WARMUP], "warm-batch"))
    client.delete(*queues)

    plain: list[float] = []
    batched: list[float] = []
    for n in range(rounds):
        one_by_one = retagged(messages, f"plain-{n}")
        in_batches = retagged(messages, f"batched-{n}")

        def send_each(msgs: Sequence[ChatMessage] = one_by_one) -> None:
            for message in msgs:
                _apply_async(app, message)

        def send_batches(msgs: Sequence[ChatMessage] = in_batches) -> None:
            for chunk in chunks(msgs, batch_size):
                dispatch_batch(app, chunk)

        plain.append(_timed(client, queues, len(messages), send_each))
        batched.append(_timed(client, queues, len(messages), send_batches))
    return PublishResult(messages=len(messages), batch_size=batch_size,
                         plain_seconds=plain, batched_seconds=batched)
