"""The CPU-bound section's shard-host row: shard hosts (the real stack) draining the same
backlog as the solo shard workers, to compare CPU per ordered task.

A host takes its shards with its own threads, not through Celery's consumer, so the drain
cannot be paused with ``cancel_consumer`` as in :mod:`bench.drain`: the backlog is published
while the hosts run, and the clock runs from Redis' ``TIME`` before the first publish to the
feed entry of the last reply. The rate is a little pessimistic (it includes the publishing);
the CPU per task is what the section compares, measured over the same window for the hosts'
process trees and their redis-server.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from bench.cpu import machine_cpu_s, process_cpu_s
from bench.drain import DrainResult
from bench.llm.systems import RunningSystem, SystemSpec, shard_hosts
from bench.load import expected_counts
from cli.chatload import check_order
from routing import ChatMessage, keys

DRAIN_TIMEOUT_S = 300.0


HOSTS = 2


def cpu_hosts(shards: int) -> SystemSpec:
    """The row's system: ``shards`` shards (SHARD_COUNT) on :data:`HOSTS` hosts, K = 1."""
    return shard_hosts("cpu-hosts", shards=shards, processes=HOSTS, concurrency=1)


def drain_hosts(system: RunningSystem, messages: Sequence[ChatMessage]) -> DrainResult:
    """One timed drain of ``messages`` by running shard hosts (see module doc)."""
    system.clear_replies()

    def cpu() -> tuple[float, float]:
        return system.probe.cpu_s(), process_cpu_s(system.redis_pid)

    workers0, redis0 = cpu()
    machine0 = machine_cpu_s()
    sec, usec = system.client.time()
    start_ms = int(sec) * 1000 + int(usec) // 1000
    wall_start = time.monotonic()
    system.publish(messages)
    deadline = wall_start + DRAIN_TIMEOUT_S
    while system.client.xlen(keys.OUTBOX_FEED) < len(messages):
        if time.monotonic() > deadline:
            raise TimeoutError(f"shard hosts: outbox feed below {len(messages)} after "
                               f"{DRAIN_TIMEOUT_S:.0f}s")
        system.workers.check_alive()
        time.sleep(0.02)
    wall = time.monotonic() - wall_start
    workers1, redis1 = cpu()
    machine1 = machine_cpu_s()
    info = system.client.xinfo_stream(keys.OUTBOX_FEED)
    end_ms = int(str(info["last-generated-id"]).split("-")[0])
    report = check_order(system.client, expected_counts(messages))
    return DrainResult(tasks=len(messages), seconds=max(end_ms - start_ms, 1) / 1000.0,
                       wall_seconds=wall, order_violations=report.violations,
                       missing=report.missing, duplicated=report.duplicated,
                       worker_cpu_s=workers1 - workers0, redis_cpu_s=redis1 - redis0,
                       drain_cpu_s=(workers1 - workers0) + (redis1 - redis0),
                       machine_cpu_s=machine1 - machine0)
