"""Run the chaos suite and print one line of figures; non-zero exit on any lost/dup/violation.

``python -m chaos.run [--runtime hosts|solo --concurrency 4 --kills 24 --redis-restarts 2
--failure-rate 0.1 ...]``: against shard hosts (``--hosts`` of them, ``--concurrency``
messages of a shard at once) by default, or one solo worker per shard.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from chaos.cluster import RUNTIMES, ChaosCluster, ClusterLog
from chaos.load import Producers, producer_app
from cli.chatload import OrderReport, check_order
from routing import keys


@dataclass(frozen=True)
class ChaosParams:
    shards: int = 4
    #: ``hosts`` (shard hosts) or ``solo`` (one worker per shard): chaos.cluster.RUNTIMES.
    runtime: str = "hosts"
    #: Shard hosts, and messages of one shard each runs at once (SHARD_CONCURRENCY).
    hosts: int = 2
    concurrency: int = 4
    users: int = 40
    producer_threads: int = 4
    pause_s: float = 0.1
    kills: int = 24
    redis_restarts: int = 2
    kill_interval_s: float = 2.5
    #: Share of AI calls that raise HandlerUnavailable (retried in place by OrderedTask).
    failure_rate: float = 0.1
    drain_timeout_s: float = 180.0
    seed: int = 7


@dataclass(frozen=True)
class ChaosResult:
    sent: int
    report: OrderReport
    cluster: ClusterLog
    longest_recovery_s: float
    unpublished: int
    runtime: str = ""

    @property
    def ok(self) -> bool:
        return self.report.ok and self.unpublished == 0

    def line(self) -> str:
        r = self.report
        return (f"chaos: runtime={self.runtime} sent={self.sent} answered={r.answered} "
                f"lost={r.missing} "
                f"duplicated={r.duplicated} violations={r.violations} kills={self.cluster.kills} "
                f"redis_restarts={self.cluster.redis_restarts} "
                f"longest_recovery_s={self.longest_recovery_s:.2f} "
                f"worker_exits={self.cluster.unplanned_exits} unpublished={self.unpublished}")


def worker_env(params: ChaosParams) -> dict[str, str]:
    return {
        "AI_HANDLER": "chaos.handlers:flaky",
        "CHAOS_FAILURE_RATE": str(params.failure_rate),
        # Enough in-place attempts that an injected failure never exhausts them.
        "ORDERED_MAX_ATTEMPTS": "50",
        "ORDERED_RETRY_BASE_S": "0.01",
        "ORDERED_RETRY_MAX_S": "0.2",
        "BREAKER_FAILURES": "1000000",
        "REDIS_APPENDFSYNC": "always",
    }


def run_chaos(params: ChaosParams, work_dir: Path) -> ChaosResult:
    rng = random.Random(params.seed)
    cluster = ChaosCluster(work_dir, params.shards, worker_env(params), runtime=params.runtime,
                           hosts=params.hosts, concurrency=params.concurrency)
    cluster.start()
    app = producer_app(cluster.url)
    producers = Producers(app, users=params.users, threads=params.producer_threads,
                          pause_s=params.pause_s)
    try:
        producers.start()
        restart_after = set(rng.sample(range(params.kills), min(params.redis_restarts,
                                                                params.kills)))
        for n in range(params.kills):
            time.sleep(params.kill_interval_s * rng.uniform(0.6, 1.4))
            cluster.kill_random_worker(rng)
            if n in restart_after:
                time.sleep(params.kill_interval_s / 2)
                cluster.restart_redis()
        time.sleep(params.kill_interval_s)
        producers.stop()
        expected = {u: n for u, n in producers.log.sent.items() if n}
        client = redis.Redis.from_url(cluster.url, decode_responses=True)
        try:
            _drain(client, sum(expected.values()), params.drain_timeout_s)
            report = check_order(client, expected)
            recovery = longest_recovery(client, cluster.log, list(expected))
        finally:
            client.close()
        runtime = params.runtime if params.runtime == "solo" else (
            f"hosts x{params.hosts} K={params.concurrency}")
        return ChaosResult(sum(expected.values()), report, cluster.log, recovery,
                           producers.log.unpublished, runtime)
    finally:
        producers.stop()
        app.close()
        cluster.stop()


def _drain(client: redis.Redis, total: int, timeout_s: float) -> None:
    """Wait until every message is answered, or until ``timeout_s`` without progress."""
    last, last_change = -1, time.monotonic()
    while time.monotonic() - last_change < timeout_s:
        done = int(client.xlen(keys.OUTBOX_FEED))
        if done >= total:
            return
        if done != last:
            last, last_change = done, time.monotonic()
        time.sleep(0.2)


def longest_recovery(client: redis.Redis, log: ClusterLog, users: list[str]) -> float:
    """Longest time from a replacement's start to its first reply (the stranded one if any)."""
    first_reply: dict[str, float] = {}
    for user in users:
        entries: Any = client.xrange(keys.outbox(user))
        for _, fields in entries:
            pid = fields.get("worker", "").rsplit(":", 1)[-1]
            at = float(fields.get("delivered_at", "inf"))
            first_reply[pid] = min(first_reply.get(pid, at), at)
    times = [first_reply[str(r.pid)] - r.started_at for r in log.replacements
             if str(r.pid) in first_reply]
    return max(times, default=float("nan"))


def main(argv: list[str] | None = None) -> int:
    defaults = ChaosParams()
    parser = argparse.ArgumentParser(description=__doc__)
    for name, value in vars(defaults).items():
        choices = RUNTIMES if name == "runtime" else None
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value,
                            choices=choices)
    params = ChaosParams(**vars(parser.parse_args(argv)))
    with tempfile.TemporaryDirectory(prefix="shardline-chaos-") as tmp:
        result = run_chaos(params, Path(tmp))
    print(result.line(), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
