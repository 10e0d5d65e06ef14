"""The LLM-latency section: every system at each latency, a burst then a live load; the
throughput of one shard host against the shards it hosts; and the moonshot figure.

Systems run one after another, each alone on the machine and on its own private Redis (a
system's idle workers would otherwise take CPU from the one measured). The live load's rate is
:data:`LIVE_SHARE` of the burst rate the same system reached just before, in the same run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.llm.loads import LoadResult, burst, live
from bench.llm.systems import SystemSpec, running, shard_hosts, solo_shards, threads_pool
from routing import shard_for

LATENCIES_MS = (1000, 200)
BURST_USERS = 200
BURST_PER_USER = 5
LIVE_SHARE = 0.8
LIVE_DURATION_S = 15.0
#: Users the live load draws from: many more than the replies in flight at once, so an idle
#: user is always at hand and every arrival comes on time.
LIVE_POPULATION = 2000

SYSTEMS = (
    threads_pool("a", locked=False),
    threads_pool("b", locked=True),
    solo_shards("c", 16),
    shard_hosts("d", shards=256, processes=2, concurrency=1),
    shard_hosts("e", shards=256, processes=2, concurrency=8),
)

#: The hosted-shards curve: one host (SHARD_PROCESSES=1, K=1, a worker thread per shard).
HOSTED_SHARDS = (16, 64, 128, 256)
CURVE_LATENCY_MS = 200
CURVE_USERS = 800

#: The moonshot: how many conversations one 2-core machine keeps in flight, order kept.
MOONSHOT = shard_hosts("moonshot", shards=256, processes=2, concurrency=8, threads=1024)
MOONSHOT_LATENCY_MS = 2000
MOONSHOT_USERS = 4000
MOONSHOT_PER_USER = 2

Say = Callable[[str], None]


@dataclass(frozen=True)
class SystemRun:
    spec: SystemSpec
    latency_ms: int
    ideal_rate: float
    burst: LoadResult
    live: LoadResult


@dataclass(frozen=True)
class CurvePoint:
    shards: int
    ideal_rate: float
    #: What the burst allows at K = 1: its busiest shard runs its messages one by one.
    busiest_shard_rate: float
    burst: LoadResult


def measure_systems(work_dir: Path, say: Say) -> list[SystemRun]:
    runs: list[SystemRun] = []
    for latency_ms in LATENCIES_MS:
        for spec in SYSTEMS:
            say(f"LLM latency {latency_ms} ms, ({spec.label}) {spec.title} ...")
            with running(spec, latency_ms, work_dir) as system:
                hit = burst(system, BURST_USERS, BURST_PER_USER)
                say(f"  burst: {hit.rate:.1f} msgs/s (ideal {system.ideal_rate:.0f}), "
                    f"{hit.violations} violations, {hit.missing} missing, "
                    f"{hit.peak_rss_mb:.0f} MB")
                steady = live(system, LIVE_SHARE * hit.rate, LIVE_DURATION_S, LIVE_POPULATION)
                say(f"  live at {steady.offered_rate:.1f}/s: p50 {steady.p50_ms:.0f} ms, "
                    f"p99 {steady.p99_ms:.0f} ms, {steady.violations} violations, "
                    f"{steady.missing} missing")
                runs.append(SystemRun(spec, latency_ms, system.ideal_rate, hit, steady))
    return runs


def measure_hosted_curve(work_dir: Path, say: Say) -> list[CurvePoint]:
    points: list[CurvePoint] = []
    for shards in HOSTED_SHARDS:
        spec = shard_hosts(f"host-{shards}", shards=shards, processes=1, concurrency=1,
                           threads=shards)
        with running(spec, CURVE_LATENCY_MS, work_dir) as system:
            hit = burst(system, CURVE_USERS, 1, prefix="s")  # users s0, s1, ...
        busiest = max(Counter(shard_for(f"s{n}", shards) for n in range(CURVE_USERS)).values())
        bound = CURVE_USERS * 1000.0 / (busiest * CURVE_LATENCY_MS)
        say(f"  1 host, {shards} shards: {hit.rate:.0f} msgs/s (ideal "
            f"{system.ideal_rate:.0f}, busiest shard allows {bound:.0f})")
        points.append(CurvePoint(shards, system.ideal_rate, bound, hit))
    return points


def measure_moonshot(work_dir: Path, say: Say) -> tuple[float, LoadResult]:
    """(ideal rate, the burst) of the moonshot hosts."""
    say(f"moonshot: {MOONSHOT.title}, L = {MOONSHOT_LATENCY_MS} ms, "
        f"{MOONSHOT_USERS} x {MOONSHOT_PER_USER} burst ...")
    with running(MOONSHOT, MOONSHOT_LATENCY_MS, work_dir) as system:
        hit = burst(system, MOONSHOT_USERS, MOONSHOT_PER_USER, prefix="m")
    say(f"  {hit.rate:.0f} msgs/s = {hit.rate * MOONSHOT_LATENCY_MS / 1000:.0f} in flight, "
        f"{hit.violations} violations, {hit.missing} missing")
    return system.ideal_rate, hit
