"""The Prometheus collector: reads Redis at scrape time and yields shardline's metric families.

Every figure comes from ``metrics.readings`` (the same functions ``shardline status`` uses),
so any exporter process on any host reports the same deployment-wide numbers. When Redis
cannot be reached the scrape still answers, with ``shardline_redis_up 0`` and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from metrics.readings import (
    DeploymentReading,
    TaskStats,
    deployment_breakers,
    read_deployment,
    read_task_stats,
)
from metrics.schema import bucket_label
from services.breaker import BreakerState, CircuitBreaker

log = logging.getLogger(__name__)


class ShardlineCollector(Collector):
    def __init__(self, client: redis.Redis, *, default_shard_count: int,
                 breakers: Iterable[CircuitBreaker] = ()) -> None:
        self.redis = client
        #: ``SHARD_COUNT``: the shard count while no shard map was written (a rescale does).
        self.default_shard_count = default_shard_count
        self.breakers = list(breakers)

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Any) -> ShardlineCollector:
        return cls(client, default_shard_count=settings.shard_count,
                   breakers=deployment_breakers(client, settings))

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not read Redis

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("shardline_redis_up", "1 if the exporter could read Redis")
        try:
            deployment = read_deployment(self.redis,
                                         default_shard_count=self.default_shard_count,
                                         breakers=self.breakers)
            stats = read_task_stats(self.redis)
        except redis.RedisError as exc:
            log.warning("scrape: cannot read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from task_families(stats)
        yield from deployment_families(deployment)


def task_families(stats: TaskStats) -> Iterator[Metric]:
    tasks = CounterMetricFamily(
        "shardline_tasks", "Task runs by outcome (retried_in_place counts failed attempts)",
        labels=["task", "queue", "outcome"])
    for (task, queue, outcome), count in sorted(stats.outcomes.items()):
        tasks.add_metric([task, queue, outcome], count)
    yield tasks
    durations = HistogramMetricFamily("shardline_task_duration_seconds",
                                      "Time a task run took", labels=["task", "queue"])
    for (task, queue), hist in sorted(stats.durations.items()):
        durations.add_metric([task, queue], [(bucket_label(b), n) for b, n in hist.buckets],
                             sum_value=hist.sum_s)
    yield durations


def deployment_families(d: DeploymentReading) -> Iterator[Metric]:
    queues = [s.queue for s in d.shards] + d.workload_queues
    depth = GaugeMetricFamily("shardline_queue_depth",
                              "Messages waiting, over all priority sub-lists", labels=["queue"])
    age = GaugeMetricFamily(
        "shardline_queue_oldest_age_seconds",
        "Age of the oldest waiting message (0: empty; absent: no published_at header)",
        labels=["queue"])
    for queue in queues:
        depth.add_metric([queue.name], queue.depth)
        waited = queue.oldest_age_s(d.read_at)
        if waited is not None:
            age.add_metric([queue.name], waited)
    yield depth
    yield age
    lease_up = GaugeMetricFamily("shardline_shard_lease_up",
                                 "1 if a worker holds the shard's lease", labels=["shard"])
    heartbeat = GaugeMetricFamily("shardline_shard_heartbeat_age_seconds",
                                  "Seconds since the shard lease was last renewed",
                                  labels=["shard"])
    violations = CounterMetricFamily("shardline_order_violations",
                                     "Ordered messages run out of their user's sequence",
                                     labels=["shard"])
    for shard in d.shards:
        lease_up.add_metric([str(shard.shard)], 0 if shard.lease is None else 1)
        if shard.heartbeat_age_s is not None:
            heartbeat.add_metric([str(shard.shard)], shard.heartbeat_age_s)
        violations.add_metric([str(shard.shard)], d.order_violations.get(shard.shard, 0))
    yield from (lease_up, heartbeat, violations)
    yield GaugeMetricFamily("shardline_shards", "Shard queues in the current shard map",
                            value=d.shard_map.count)
    yield GaugeMetricFamily("shardline_shard_map_epoch", "Rescales so far (the map's epoch)",
                            value=d.shard_map.epoch or 0)
    yield GaugeMetricFamily("shardline_dead_letters", "Messages in the dead-letter store",
                            value=d.dead_letters)
    yield CounterMetricFamily("shardline_duplicates_dropped",
                              "Dispatches not published: their message id was seen before",
                              value=d.duplicates_dropped)
    yield from breaker_families(d)


def breaker_families(d: DeploymentReading) -> Iterator[Metric]:
    is_open = GaugeMetricFamily("shardline_breaker_open", "1 while the circuit breaker is open",
                                labels=["name"])
    state = GaugeMetricFamily("shardline_breaker_state",
                              "1 for the breaker's current state", labels=["name", "state"])
    failures = GaugeMetricFamily("shardline_breaker_failures",
                                 "Consecutive failures counted by the breaker", labels=["name"])
    for name, status in sorted(d.breakers.items()):
        is_open.add_metric([name], 1 if status.state is BreakerState.OPEN else 0)
        for each in BreakerState:
            state.add_metric([name, each.value], 1 if status.state is each else 0)
        failures.add_metric([name], status.failures)
    yield from (is_open, state, failures)


def registry_for(client: redis.Redis, settings: Any) -> CollectorRegistry:
    """A registry holding only shardline's deployment-wide metrics."""
    registry = CollectorRegistry()
    registry.register(ShardlineCollector.from_settings(client, settings))
    return registry
