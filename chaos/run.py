"""Run the chaos suite and print one line of figures; non-zero exit on any lost/dup/violation.

``python -m chaos.run [--runtime hosts|solo --concurrency 4 --kills 24 --redis-restarts 2
--failure-rate 0.1 ...]``: against shard hosts (``--hosts`` of them, ``--concurrency``
messages of a shard at once) by default, or one solo worker per shard.

``--failover``: Redis is a master, a replica and three sentinels (``REDIS_URL=sentinel://...``),
with ``REDIS_WAIT_REPLICAS=1`` on the workers and the producers; instead of Redis crashes the
suite runs ``--failovers`` (2) ``SENTINEL FAILOVER``s. docs/production-redis.md promises nothing
lost, duplicated or reordered under the option, and the line must show that.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

import celeryconfig
from chaos.cluster import RUNTIMES, ChaosCluster, ClusterLog
from chaos.load import Producers, producer_app
from cli.chatload import OrderReport, check_order
from routing import keys
from services.redis_client import connect


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
    #: ``SENTINEL FAILOVER``s in ``--failover`` mode (which sets ``sentinel``).
    failovers: int = 2
    sentinel: bool = False


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
                f"failovers={self.cluster.failovers} "
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
        **(FAILOVER_ENV if params.sentinel else {}),
    }


#: What a Sentinel deployment sets (docs/production-redis.md): the wait option, and a lease
#: that outlives the seconds Sentinel takes to demote the old master.
FAILOVER_ENV = {"REDIS_WAIT_REPLICAS": "1", "SHARD_LEASE_TTL_S": "30"}


def run_chaos(params: ChaosParams, work_dir: Path) -> ChaosResult:
    rng = random.Random(params.seed)
    cluster = ChaosCluster(work_dir, params.shards, worker_env(params), runtime=params.runtime,
                           hosts=params.hosts, concurrency=params.concurrency,
                           sentinel=params.sentinel)
    cluster.start()
    # This process's producers publish as the deployment is configured: its Redis (the
    # router's send_task reads the shard map from REDIS_URL's Redis) and its shard count.
    # Put back afterwards: a test process runs other tests after this one.
    own_settings = celeryconfig.settings
    celeryconfig.settings = dataclasses.replace(
        celeryconfig.settings, redis_url=cluster.url, shard_count=params.shards,
        redis_wait_replicas=1 if params.sentinel else celeryconfig.settings.redis_wait_replicas)
    app = producer_app(cluster.url)
    producers = Producers(app, users=params.users, threads=params.producer_threads,
                          pause_s=params.pause_s, scripted=params.sentinel)
    try:
        producers.start()
        outages = params.failovers if params.sentinel else params.redis_restarts
        outage_after = set(rng.sample(range(params.kills), min(outages, params.kills)))
        for n in range(params.kills):
            time.sleep(params.kill_interval_s * rng.uniform(0.6, 1.4))
            cluster.kill_random_worker(rng)
            if n in outage_after:
                time.sleep(params.kill_interval_s / 2)
                if params.sentinel:
                    cluster.failover()
                else:
                    cluster.restart_redis()
        time.sleep(params.kill_interval_s)
        producers.stop()
        expected = {u: n for u, n in producers.log.sent.items() if n}
        client = connect(cluster.url)
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
        celeryconfig.settings = own_settings


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
        if name == "sentinel":  # set by --failover
            continue
        choices = RUNTIMES if name == "runtime" else None
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value,
                            choices=choices)
    parser.add_argument("--failover", action="store_true",
                        help="a master, a replica and three sentinels; SENTINEL FAILOVERs "
                             "instead of Redis crashes, with REDIS_WAIT_REPLICAS=1")
    args = vars(parser.parse_args(argv))
    args["sentinel"] = args.pop("failover")
    params = ChaosParams(**args)
    with tempfile.TemporaryDirectory(prefix="shardline-chaos-") as tmp:
        result = run_chaos(params, Path(tmp))
    print(result.line(), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
