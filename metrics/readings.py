"""Reading a deployment's state out of Redis: the one home of every figure shardline reports.

The Prometheus collector (``metrics.collector``) and ``shardline status`` both call these
functions, so a number means the same in both. Each function is one pipelined round trip
(the breakers add one each). Nothing here writes.

Queue depth is the sum of kombu's priority sub-lists of the queue. The age of the oldest
waiting message is read from the ``published_at`` header of the message at the right end of
each sub-list (kombu LPUSHes and consumers take from the right, so that one waited longest);
a queue whose oldest messages lack the header has no age (``None``), an empty queue has 0.
Ages use this reader's clock against the producer's; heartbeat ages use Redis' clock only.

The shards are those of the shard map in Redis (``routing.shardmap``; ``SHARD_COUNT`` until a
rescale writes one). A shard an earlier epoch had and the current one has not is listed while
it still has waiting messages or a lease holder (it is being drained), and then no more.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from metrics.schema import COUNT, DURATION_BUCKETS, RATE_WINDOW_S, SUM, labels_of
from routing import keys
from routing.envelope import PUBLISHED_AT_HEADER
from routing.kombu_lists import priority_lists
from routing.queues import WORKLOAD_QUEUES, shard_queue
from routing.replies import text_map
from routing.shardmap import ShardMap, epoch_counts, read_shard_map
from services.breaker import AI_BREAKER, BreakerStatus, CircuitBreaker
from shardhost.lease import LeaseHolder, parse_lease


@dataclass(frozen=True)
class QueueReading:
    name: str
    #: Messages waiting in each priority sub-list, by step (0: the queue's own list).
    by_priority: dict[int, int]
    #: ``published_at`` of the oldest waiting message that carries it; None if none does.
    oldest_published_at: float | None

    @property
    def depth(self) -> int:
        return sum(self.by_priority.values())

    def oldest_age_s(self, now: float) -> float | None:
        """Seconds the oldest message has waited: 0 when empty, None when it has no header."""
        if self.depth == 0:
            return 0.0
        if self.oldest_published_at is None:
            return None
        return max(now - self.oldest_published_at, 0.0)


@dataclass(frozen=True)
class ShardReading:
    shard: int
    queue: QueueReading
    #: The lease's current owner, or None when no worker holds the shard.
    lease: LeaseHolder | None
    #: Seconds since the lease was last taken or renewed (Redis' clock); None if not held.
    heartbeat_age_s: float | None
    #: True for a shard the current map no longer has, listed while it drains.
    retired: bool = False


@dataclass(frozen=True)
class DeploymentReading:
    #: This reader's clock (unix seconds) when it read: message ages are relative to it.
    read_at: float
    #: The shard map the shards were read under.
    shard_map: ShardMap
    shards: list[ShardReading]
    workload_queues: list[QueueReading]
    dead_letters: int
    duplicates_dropped: int
    #: Shard -> ordered messages run out of sequence there; every listed shard, 0 if none.
    order_violations: dict[int, int]
    breakers: dict[str, BreakerStatus]


def deployment_breakers(client: redis.Redis, settings: Any) -> list[CircuitBreaker]:
    """The breakers a deployment's workers use, with the thresholds the workers recorded
    (``settings``' until one has)."""
    return [CircuitBreaker.as_recorded(client, AI_BREAKER, settings=settings)]


def read_deployment(client: redis.Redis, *, default_shard_count: int,
                    breakers: Iterable[CircuitBreaker] = ()) -> DeploymentReading:
    """Queues, shard leases, dead letters, duplicates, order violations and breakers.

    ``default_shard_count`` is ``SHARD_COUNT``: the shard count while no map was written.
    """
    shard_map = read_shard_map(client, default_shard_count)
    shard_count = max([shard_map.count, *epoch_counts(client, default_shard_count).values()])
    queues = [shard_queue(s) for s in range(shard_count)] + list(WORKLOAD_QUEUES)
    with client.pipeline(transaction=False) as pipe:
        pipe.time()
        for queue in queues:
            for _, name in priority_lists(queue):
                pipe.llen(name)
                pipe.lindex(name, -1)
        for shard in range(shard_count):
            pipe.hgetall(keys.shard_lease(shard))
            pipe.pttl(keys.shard_lease(shard))
        pipe.zcard(keys.DEAD_LETTER_INDEX)
        pipe.get(keys.DUPLICATES_DROPPED)
        pipe.hgetall(keys.ORDER_VIOLATIONS)
        replies = iter(pipe.execute())
    read_at = time.time()
    seconds, micros = next(replies)
    redis_now = int(seconds) + int(micros) / 1e6
    readings = {queue: _queue_reading(queue, replies) for queue in queues}
    shards = []
    for shard in range(shard_count):
        lease = parse_lease(next(replies), next(replies))
        age = None
        if lease is not None and lease.renewed_at is not None:
            age = max(redis_now - lease.renewed_at, 0.0)
        waiting = readings[shard_queue(shard)]
        retired = shard >= shard_map.count
        if not retired or waiting.depth or lease is not None:
            shards.append(ShardReading(shard, waiting, lease, age, retired))
    dead_letters, duplicates, violations = next(replies), next(replies), next(replies)
    counted = {int(k): int(v) for k, v in text_map(violations).items() if k.isdigit()}
    return DeploymentReading(
        read_at=read_at, shard_map=shard_map, shards=shards,
        workload_queues=[readings[q] for q in WORKLOAD_QUEUES],
        dead_letters=int(dead_letters), duplicates_dropped=int(duplicates or 0),
        order_violations={s.shard: counted.get(s.shard, 0) for s in shards},
        breakers={b.name: b.status() for b in breakers},
    )


def _queue_reading(queue: str, replies: Any) -> QueueReading:
    by_priority: dict[int, int] = {}
    published: list[float] = []
    for step, _ in priority_lists(queue):
        by_priority[step] = int(next(replies))
        at = published_at(next(replies))
        if at is not None:
            published.append(at)
    return QueueReading(queue, by_priority, min(published) if published else None)


def published_at(item: str | bytes | None) -> float | None:
    """The ``published_at`` header of one raw list item (a kombu envelope), if it has one."""
    if item is None:
        return None
    try:
        value = json.loads(item)["headers"][PUBLISHED_AT_HEADER]
        return float(value) if value is not None else None
    except (ValueError, TypeError, KeyError):
        return None


@dataclass(frozen=True)
class DurationHistogram:
    #: ``(upper bound, runs at most that long)`` in increasing order, ending with +Inf.
    buckets: list[tuple[float, int]]
    sum_s: float

    @property
    def count(self) -> int:
        return self.buckets[-1][1]


@dataclass(frozen=True)
class TaskStats:
    #: ``(task, queue, outcome)`` -> runs (and in-place retries) counted.
    outcomes: dict[tuple[str, str, str], int]
    #: ``(task, queue)`` -> how long its runs took.
    durations: dict[tuple[str, str], DurationHistogram]


def read_task_stats(client: redis.Redis) -> TaskStats:
    """Every task outcome counter and duration histogram the workers recorded."""
    with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.TASK_OUTCOMES)
        pipe.hgetall(keys.TASK_DURATIONS)
        raw_outcomes, raw_durations = pipe.execute()
    outcomes: dict[tuple[str, str, str], int] = {}
    for raw, value in text_map(raw_outcomes).items():
        labels = _labels(raw, 3)
        if labels is not None:
            outcomes[(labels[0], labels[1], labels[2])] = int(value)
    per_series: dict[tuple[str, str], dict[str, str]] = {}
    for raw, value in text_map(raw_durations).items():
        labels = _labels(raw, 3)
        if labels is not None:
            per_series.setdefault((labels[0], labels[1]), {})[labels[2]] = value
    return TaskStats(outcomes, {series: _histogram(fields)
                                for series, fields in per_series.items()})


def _histogram(fields: dict[str, str]) -> DurationHistogram:
    counts: dict[float, int] = {bound: 0 for bound in DURATION_BUCKETS}
    for name, value in fields.items():
        if name not in (SUM, COUNT):
            counts[float(name)] = counts.get(float(name), 0) + int(value)
    counts.setdefault(math.inf, 0)
    cumulative, total = [], 0
    for bound in sorted(counts):
        total += counts[bound]
        cumulative.append((bound, total))
    return DurationHistogram(cumulative, float(fields.get(SUM, 0.0)))


def read_rates(client: redis.Redis, queues: Iterable[str], *, now: float | None = None,
               window_s: int = RATE_WINDOW_S) -> dict[str, float]:
    """Tasks per second finished from each queue over the last ``window_s`` seconds."""
    queues = list(queues)
    last = int(time.time() if now is None else now)
    seconds = range(last - window_s + 1, last + 1)
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.mget([keys.completions(queue, s) for s in seconds])
        replies = pipe.execute()
    return {queue: sum(int(n) for n in counts if n is not None) / window_s
            for queue, counts in zip(queues, replies, strict=True)}


def _labels(raw: str, size: int) -> list[str] | None:
    try:
        labels = labels_of(raw)
    except ValueError:
        return None
    return labels if len(labels) == size else None
