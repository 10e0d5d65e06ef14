"""The systems under test, each started on its own fresh private Redis and stopped here.

- (a) plain Celery, one ``-P threads -c 64`` worker on one queue (:data:`bench.llm.names.REPLY`);
- (b) the same pool, a Redis lock per user (:data:`bench.llm.names.LOCKED_REPLY`);
- (c) today's process-per-shard: one solo worker per shard, the real shardline stack;
- (d), (e) shard hosts: ``python -m deploy.shards`` with ``SHARD_PROCESSES`` hosts and
  ``SHARD_CONCURRENCY`` K, the real stack too.

Every system answers through a sleep of ``AI_LATENCY_MS`` (the offline responder for the real
stack) and appends each reply to the user's outbox and to the outbox feed, so the loads
(:mod:`bench.llm.loads`) read every system the same way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis
from celery import Celery

from bench.llm.names import INCLUDE, LOCKED_REPLY, QUEUE, REPLY
from bench.llm.probe import TreeProbe
from bench.load import chunks, expected_counts
from bench.scenarios import fresh_redis, producer, worker_env
from bench.workers import Workers, celery_worker_argv
from cli.chatload import check_order
from routing import ChatMessage, dispatch_batch, keys, send
from shardhost.launcher import shard_worker_argv

LOGLEVEL = "WARNING"
THREADS = 64
PUBLISH_CHUNK = 500
READY_TIMEOUT_S = 240.0
WARMUP_USERS = 64
#: What a load leaves behind and the next load must not see (kombu's queues and the shard
#: leases stay).
REPLY_KEYS = (keys.outbox("*"), keys.OUTBOX_FEED, keys.history("*"), keys.done("*"))


@dataclass(frozen=True)
class SystemSpec:
    """One system: ``kind`` says how it starts, ``slots`` how many replies it can await at
    once (the ideal rate is slots / latency)."""

    label: str
    title: str
    kind: str  # "threads", "locked", "solo" or "hosts"
    slots: int
    shard_count: int = 1
    env: dict[str, str] = field(default_factory=dict)


def threads_pool(label: str, *, locked: bool) -> SystemSpec:
    what = "a Redis lock per user (SET NX EX), retry when taken" if locked else "one queue"
    return SystemSpec(label, f"plain Celery -P threads -c {THREADS}, {what}",
                      "locked" if locked else "threads", THREADS)


def solo_shards(label: str, count: int) -> SystemSpec:
    return SystemSpec(label, f"process-per-shard: {count} solo shard workers", "solo", count,
                      count)


def shard_hosts(label: str, *, shards: int, processes: int, concurrency: int,
                threads: int = THREADS) -> SystemSpec:
    """``processes`` hosts of ``threads`` worker threads, ``shards`` shards between them."""
    per_host = -(-shards // processes)
    slots = processes * min(threads, per_host * concurrency)
    return SystemSpec(label, f"shard hosts: SHARD_COUNT={shards} SHARD_PROCESSES={processes} "
                             f"SHARD_CONCURRENCY={concurrency} SHARD_HOST_THREADS={threads}",
                      "hosts", slots, shards,
                      {"SHARD_PROCESSES": str(processes), "SHARD_CONCURRENCY": str(concurrency),
                       "SHARD_HOST_THREADS": str(threads)})


@dataclass
class RunningSystem:
    """A started, warmed-up system: publish to it, read its replies from ``client``."""

    spec: SystemSpec
    latency_ms: int
    app: Celery
    client: redis.Redis
    workers: Workers
    probe: TreeProbe
    redis_pid: int

    @property
    def ideal_rate(self) -> float:
        """Replies per second if every slot always awaited a reply: slots / latency."""
        return self.spec.slots * 1000.0 / self.latency_ms if self.latency_ms else float("inf")

    def publish(self, messages: Sequence[ChatMessage]) -> None:
        """Publish ``messages`` in order, the way this system's producers do."""
        if self.spec.kind in ("solo", "hosts"):
            for chunk in chunks(messages, PUBLISH_CHUNK):
                dispatch_batch(self.app, chunk)
            return
        name = LOCKED_REPLY if self.spec.kind == "locked" else REPLY
        with self.app.producer_or_acquire() as producer:
            for m in messages:
                self.app.send_task(name, args=[str(m.user_id), m.extra["seq"], m.sent_at],
                                   queue=QUEUE, producer=producer)

    def publish_one(self, message: ChatMessage) -> None:
        if self.spec.kind in ("solo", "hosts"):
            send(self.app, message)
        else:
            self.publish([message])

    def clear_replies(self) -> None:
        for pattern in REPLY_KEYS:
            found = list(self.client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(found), 1000):
                self.client.delete(*found[start:start + 1000])


def _start(workers: Workers, spec: SystemSpec, loglevel: str) -> None:
    if spec.kind in ("threads", "locked"):
        workers.start("threads", celery_worker_argv(
            "threads", "-P", "threads", "-c", str(spec.slots), "-Q", QUEUE, *INCLUDE,
            loglevel=loglevel))
    elif spec.kind == "solo":
        for shard in range(spec.shard_count):
            workers.start(f"shard-{shard}", shard_worker_argv(shard, loglevel))
    else:
        workers.start("shard-hosts", [sys.executable, "-m", "deploy.shards"])


def _wait_leases(client: redis.Redis, shard_count: int, system: Workers) -> None:
    """Shard hosts are ready when every shard's lease key exists."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    lease_keys = [keys.shard_lease(n) for n in range(shard_count)]
    while int(client.exists(*lease_keys)) < shard_count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"shard hosts hold {client.exists(*lease_keys)} of "
                               f"{shard_count} leases after {READY_TIMEOUT_S:.0f}s")
        system.check_alive()
        time.sleep(0.2)


def _warm_up(system: RunningSystem) -> None:
    """A reply from (nearly) every worker before anything is timed: boots, imports and
    connections stay out of the figures."""
    messages = [ChatMessage(f"warm{n}", "warm-up", message_id=f"warm{n}-0",
                            sent_at=time.time(), extra={"seq": 0})
                for n in range(WARMUP_USERS)]
    system.publish(messages)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while check_order(system.client, expected_counts(messages)).missing:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{system.spec.label}: warm-up replies missing after "
                               f"{READY_TIMEOUT_S:.0f}s")
        system.workers.check_alive()
        time.sleep(0.2)
    system.clear_replies()


@contextmanager
def running(spec: SystemSpec, latency_ms: int, work_dir: Path, *,
            loglevel: str = LOGLEVEL) -> Iterator[RunningSystem]:
    """``spec`` started at ``AI_LATENCY_MS`` = ``latency_ms`` on a new private Redis, warmed
    up; everything stopped on exit."""
    name = f"llm-{spec.label}-{latency_ms}ms"
    with fresh_redis(work_dir, name) as (server, client):
        app = producer(server.url, spec.shard_count)
        env = {**worker_env(work_dir / name / "home", spec.shard_count),
               "AI_LATENCY_MS": str(latency_ms), "LOG_LEVEL": loglevel, **spec.env}
        try:
            with Workers(server.url, work_dir / name / "logs", **env) as workers:
                _start(workers, spec, loglevel)
                if spec.kind == "hosts":
                    _wait_leases(client, spec.shard_count, workers)
                assert server.process is not None
                system = RunningSystem(spec, latency_ms, app, client, workers,
                                       TreeProbe(workers.pids()), server.process.pid)
                _warm_up(system)
                yield system
        finally:
            app.close()
