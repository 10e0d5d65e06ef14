"""Ordered throughput: how fast running, warmed-up workers drain a backlog of no-op replies.

Method. Worker boot (importing Celery, forking, connecting, taking the shard lease) is seconds
of CPU on a small machine and is not what we compare, so it is kept out of the clock:

1. :func:`prepare`: wait until each queue has a consumer, then warm up (a few messages per
   queue, every reply awaited) so each process has built its services and run the task once;
2. :func:`drain_once`, pause: ``cancel_consumer`` every queue on its worker (the workers stay
   up, idle), then wait longer than kombu's Redis ``BRPOP`` timeout (1 s) so no read issued
   before the cancel is still pending and could take a backlog message;
3. publish the whole backlog and check it is all waiting in the queues (nothing consumed);
4. note Redis' clock (``TIME``), ``add_consumer`` every queue on its own worker again, and
   wait until the outbox feed (one ``XADD`` per delivered reply, its id stamped by Redis'
   clock) holds every reply. Drain time = ms part of the feed's last entry id minus that
   ``TIME``: both from the Redis server's clock, so polling adds nothing to it;
5. check every user's order, then delete the round's replies, histories, done-markers and
   dedup claims (not kombu's bindings nor the shard leases), so the next round starts clean.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis
from celery import Celery

from bench.load import chunks, expected_counts
from bench.noop import NAME as NOOP
from cli.chatload import check_order
from routing import ChatMessage, dispatch_batch, keys

PUBLISH_CHUNK = 500
DRAIN_TIMEOUT_S = 300.0
#: Longer than kombu's Redis transport ``brpop_timeout`` (1 s).
BRPOP_SETTLE_S = 1.5
#: What a round leaves behind and the next round must not see.
ROUND_KEYS = (keys.outbox("*"), keys.OUTBOX_FEED, keys.history("*"), keys.done("*"),
              keys.dedup("*", "*"))

Check = Callable[[], None]
#: Cumulative CPU seconds: (the deployment's workers + its redis-server, the whole machine).
CpuProbe = Callable[[], tuple[float, float]]


@dataclass(frozen=True)
class DrainResult:
    tasks: int
    seconds: float
    wall_seconds: float
    order_violations: int
    missing: int
    duplicated: int
    #: CPU seconds the workers (every process of theirs) and redis-server used in the drain.
    worker_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    #: CPU seconds within the timed drain only: the deployment's, and every process's.
    drain_cpu_s: float = 0.0
    machine_cpu_s: float = 0.0

    @property
    def cpu_ms_per_task(self) -> float:
        return 1000.0 * (self.worker_cpu_s + self.redis_cpu_s) / self.tasks

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds

    @property
    def cores_busy(self) -> float:
        """Cores the deployment (workers + Redis) kept busy on average during the drain."""
        return self.drain_cpu_s / self.wall_seconds

    @property
    def machine_cores_busy(self) -> float:
        """Cores busy on the whole machine during the drain (this bench and anything else)."""
        return self.machine_cpu_s / self.wall_seconds


def _redis_ms(client: redis.Redis) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def _last_entry_ms(client: redis.Redis) -> int:
    """The Redis clock (ms) when the last reply went into the outbox feed."""
    info = client.xinfo_stream(keys.OUTBOX_FEED)
    return int(str(info["last-generated-id"]).split("-")[0])


def _consumers(app: Celery) -> dict[str, str]:
    """Queue -> name of the worker consuming it."""
    replies = app.control.inspect(timeout=1.0).active_queues() or {}
    return {q["name"]: worker for worker, queues in replies.items() for q in queues}


def _wait_feed(client: redis.Redis, target: int, alive: Check) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while client.xlen(keys.OUTBOX_FEED) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"outbox feed below {target} after {DRAIN_TIMEOUT_S:.0f}s")
        alive()
        time.sleep(0.02)


def _clean(client: redis.Redis) -> None:
    for pattern in ROUND_KEYS:
        batch = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(batch), 1000):
            client.delete(*batch[start:start + 1000])


def prepare(app: Celery, client: redis.Redis, queues: Sequence[str],
            warmup: Sequence[ChatMessage], alive: Check) -> dict[str, str]:
    """Wait for a consumer on every queue (failing fast if a worker dies), warm up; returns
    queue -> worker name."""
    deadline = time.monotonic() + 180.0
    while True:
        alive()
        owners = {q: w for q, w in _consumers(app).items() if q in queues}
        if len(owners) == len(queues):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"no worker consumes {sorted(set(queues) - set(owners))}")
        time.sleep(0.3)
    dispatch_batch(app, warmup)
    _wait_feed(client, len(warmup), alive)
    _clean(client)
    return owners


def _pause(app: Celery, owners: dict[str, str]) -> None:
    for queue, worker in owners.items():
        app.control.cancel_consumer(queue, destination=[worker], reply=True, timeout=5.0)
    deadline = time.monotonic() + 30.0
    while set(_consumers(app)) & set(owners):
        if time.monotonic() > deadline:
            raise TimeoutError("workers still consume after cancel_consumer")
        time.sleep(0.2)
    time.sleep(BRPOP_SETTLE_S)


@dataclass(frozen=True)
class _Timed:
    seconds: float
    wall_seconds: float
    drain_cpu_s: float
    machine_cpu_s: float


def _timed(app: Celery, client: redis.Redis, owners: dict[str, str], expected: int,
           publish: Callable[[], None], alive: Check, cpu: CpuProbe | None) -> _Timed:
    """Pause the consumers, ``publish`` the backlog, then time its drain: from resuming the
    consumers until the outbox feed holds ``expected`` entries (see module doc)."""
    _pause(app, owners)
    publish()
    waiting = sum(int(client.llen(q)) for q in owners)
    if waiting != expected or client.xlen(keys.OUTBOX_FEED) != 0:
        raise RuntimeError(f"backlog not intact before the drain: {waiting} of "
                           f"{expected} queued")

    cpu_before = cpu() if cpu else (0.0, 0.0)
    start_ms = _redis_ms(client)
    wall_start = time.monotonic()
    for queue, worker in owners.items():
        app.control.add_consumer(queue, destination=[worker], reply=False)
    _wait_feed(client, expected, alive)
    wall = time.monotonic() - wall_start
    cpu_after = cpu() if cpu else (0.0, 0.0)
    end_ms = _last_entry_ms(client)
    return _Timed(seconds=max(end_ms - start_ms, 1) / 1000.0, wall_seconds=wall,
                  drain_cpu_s=cpu_after[0] - cpu_before[0],
                  machine_cpu_s=cpu_after[1] - cpu_before[1])


def drain_once(app: Celery, client: redis.Redis, owners: dict[str, str],
               messages: Sequence[ChatMessage], alive: Check,
               cpu: CpuProbe | None = None) -> DrainResult:
    """One timed drain of ``messages`` by the workers in ``owners`` (see module doc); ``cpu``
    is read right before consumption resumes and right after the last reply."""
    def publish() -> None:
        for chunk in chunks(messages, PUBLISH_CHUNK):
            dispatch_batch(app, chunk)

    timed = _timed(app, client, owners, len(messages), publish, alive, cpu)
    report = check_order(client, expected_counts(messages))
    _clean(client)
    return DrainResult(tasks=len(messages), seconds=timed.seconds,
                       wall_seconds=timed.wall_seconds, order_violations=report.violations,
                       missing=report.missing, duplicated=report.duplicated,
                       drain_cpu_s=timed.drain_cpu_s, machine_cpu_s=timed.machine_cpu_s)


def drain_noops(app: Celery, client: redis.Redis, owners: dict[str, str], count: int,
                alive: Check, cpu: CpuProbe | None = None) -> DrainResult:
    """One timed drain of ``count`` :mod:`bench.noop` tasks spread evenly over the queues of
    ``owners``: the same clock as :func:`drain_once`, with no task work to speak of."""
    queues = sorted(owners)

    def publish() -> None:
        with app.producer_or_acquire() as producer:
            for n in range(count):
                app.send_task(NOOP, args=[n], queue=queues[n % len(queues)],
                              producer=producer)

    timed = _timed(app, client, owners, count, publish, alive, cpu)
    _clean(client)
    return DrainResult(tasks=count, seconds=timed.seconds, wall_seconds=timed.wall_seconds,
                       order_violations=0, missing=0, duplicated=0,
                       drain_cpu_s=timed.drain_cpu_s, machine_cpu_s=timed.machine_cpu_s)
