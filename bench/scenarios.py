"""The deployments under test, each on its own fresh private Redis, and the publish rates.

Everything started here is stopped here (context managers), on success and on error.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import redis
from celery import Celery

from bench.cpu import group_cpu_s, machine_cpu_s, process_cpu_s
from bench.drain import CpuProbe, DrainResult, drain_noops, drain_once, prepare
from bench.noop import INCLUDE as NOOP_INCLUDE
from bench.publish import PublishResult, measure_publish
from bench.workers import Workers, celery_worker_argv
from deploy.embedded_redis import EmbeddedRedis
from routing import ChatMessage, ShardRouter
from routing.queues import shard_queue
from shardhost.launcher import shard_worker_argv

SHARDS = 4
NAIVE_CONCURRENCY = 4
LOGLEVEL = "INFO"


def worker_env(home: Path, shard_count: int = SHARDS) -> dict[str, str]:
    """The same no-op workload for every worker: offline responder, no simulated latency."""
    return {"SHARDLINE_HOME": str(home), "SHARD_COUNT": str(shard_count), "AI_LATENCY_MS": "0",
            "AI_HANDLER": "services.ai.offline:OfflineResponder", "MESSENGER": "outbox",
            "LOG_LEVEL": LOGLEVEL, "SHARD_RANGE": ""}


def producer(url: str, shard_count: int) -> Celery:
    app = Celery("shardline-bench")
    app.config_from_object("celeryconfig")
    app.conf.broker_url = url
    app.conf.task_routes = (ShardRouter(shard_count),)
    return app


@contextmanager
def fresh_redis(work_dir: Path, name: str) -> Iterator[tuple[EmbeddedRedis, redis.Redis]]:
    """A new private redis-server on a free port (never the machine's 6379), then stopped.

    Empty: a data directory left by an earlier server of the same name is removed first (its
    append-only file would bring back that run's keys, among them the publish dedup claims
    that make a repeated message id a duplicate)."""
    data_dir = work_dir / name / "redis"
    shutil.rmtree(data_dir, ignore_errors=True)
    server = EmbeddedRedis(data_dir)
    server.start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        yield server, client
    finally:
        client.close()
        server.stop()


@dataclass
class Deployment:
    """Running, warmed-up workers on their own Redis, ready for timed drains."""

    name: str
    app: Celery
    client: redis.Redis
    workers: Workers
    owners: dict[str, str]
    redis_pid: int

    def drain(self, messages: Sequence[ChatMessage]) -> DrainResult:
        """A timed drain of ordered chat messages (bench.drain.drain_once)."""
        return self._measured(lambda cpu: drain_once(self.app, self.client, self.owners,
                                                     messages, self.workers.check_alive, cpu))

    def drain_noops(self, count: int) -> DrainResult:
        """A timed drain of ``count`` reference no-op tasks (bench.noop)."""
        return self._measured(lambda cpu: drain_noops(self.app, self.client, self.owners,
                                                      count, self.workers.check_alive, cpu))

    def _measured(self, drain: Callable[[CpuProbe], DrainResult]) -> DrainResult:
        groups = self.workers.pids()  # each worker leads its own process group
        worker_cpu, redis_cpu = group_cpu_s(groups), process_cpu_s(self.redis_pid)

        def cpu() -> tuple[float, float]:
            return group_cpu_s(groups) + process_cpu_s(self.redis_pid), machine_cpu_s()

        result = drain(cpu)
        # Includes the pause and the order check around the timed drain: idle, nearly free.
        return replace(result, worker_cpu_s=group_cpu_s(groups) - worker_cpu,
                       redis_cpu_s=process_cpu_s(self.redis_pid) - redis_cpu)


@contextmanager
def deployment(work_dir: Path, name: str, shard_count: int,
               start: Callable[[Workers], None], warmup: Sequence[ChatMessage],
               **env: str) -> Iterator[Deployment]:
    """Workers started by ``start`` with :func:`worker_env` (``env`` overrides it)."""
    with fresh_redis(work_dir, name) as (server, client):
        url = server.url
        app = producer(url, shard_count)
        try:
            with Workers(url, work_dir / name / "logs",
                         **{**worker_env(work_dir / name / "home", shard_count),
                            **env}) as workers:
                start(workers)
                queues = [shard_queue(s) for s in range(shard_count)]
                owners = prepare(app, client, queues, warmup, workers.check_alive)
                assert server.process is not None
                yield Deployment(name, app, client, workers, owners, server.process.pid)
        finally:
            app.close()


def _shard_starter(count: int) -> Callable[[Workers], None]:
    def start(workers: Workers) -> None:
        for shard in range(count):
            workers.start(f"shard-{shard}", [*shard_worker_argv(shard, LOGLEVEL),
                                              *NOOP_INCLUDE])
    return start


def _start_naive(workers: Workers) -> None:
    workers.start("naive", celery_worker_argv(
        "naive", "-P", "prefork", "-c", str(NAIVE_CONCURRENCY), "--prefetch-multiplier", "1",
        "-Q", shard_queue(0), *NOOP_INCLUDE, loglevel=LOGLEVEL))


def shards_deployment(work_dir: Path, warmup: Sequence[ChatMessage], count: int = SHARDS,
                      **env: str) -> AbstractContextManager[Deployment]:
    """``count`` shards (SHARD_COUNT) with one solo worker each, alone on its queue, exactly
    as ``shardhost.launcher`` runs them (plus the bench's reference task, bench.noop)."""
    return deployment(work_dir, f"shards-{count}", count, _shard_starter(count), warmup, **env)


def naive_deployment(work_dir: Path,
                     warmup: Sequence[ChatMessage]) -> AbstractContextManager[Deployment]:
    """The deployment shards replace: one prefork worker, -c 4, on one queue (everything
    routed to shard.0; acks_late and prefetch multiplier 1 come from celeryconfig), with the
    bench's reference task (bench.noop) too."""
    return deployment(work_dir, "naive", 1, _start_naive, warmup)


def publish_rates(work_dir: Path, messages: Sequence[ChatMessage], batch_size: int,
                  rounds: int) -> PublishResult:
    with fresh_redis(work_dir, "publish") as (server, client):
        app = producer(server.url, SHARDS)
        try:
            return measure_publish(app, client, [shard_queue(s) for s in range(SHARDS)],
                                   messages, batch_size, rounds)
        finally:
            app.close()


def hol_deployment(work_dir: Path, warmup: Sequence[ChatMessage], shard_count: int,
                   slow_ms: int) -> AbstractContextManager[Deployment]:
    """Solo shard workers whose AI handler takes ``slow_ms`` for slow users only."""
    return deployment(work_dir, "head-of-line", shard_count, _shard_starter(shard_count),
                      warmup, AI_HANDLER="bench.handlers:SlowUsers", AI_LATENCY_MS=str(slow_ms))
