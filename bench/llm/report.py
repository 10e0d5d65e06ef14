"""The LLM-latency section's part of ``bench/results.json`` (key ``llm_latency``), its targets
and its table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.llm.loads import LoadResult
from bench.llm.section import (
    BURST_PER_USER,
    BURST_USERS,
    CURVE_LATENCY_MS,
    CURVE_USERS,
    LIVE_DURATION_S,
    LIVE_POPULATION,
    LIVE_SHARE,
    MOONSHOT,
    MOONSHOT_LATENCY_MS,
    MOONSHOT_PER_USER,
    MOONSHOT_USERS,
    CurvePoint,
    SystemRun,
)

#: (d) and (e) burst rate against (a)'s at the same latency.
HOSTS_K1_OVER_THREADS = 0.75
HOSTS_K8_OVER_THREADS = 0.9
HOSTS_RSS_MB = 400.0
#: (e)'s p99 under the live load, in units of the latency.
LIVE_P99_OVER_LATENCY = 1.5
ORDERED = ("c", "d", "e")


def _load(result: LoadResult) -> dict[str, Any]:
    return {"messages": result.messages, "seconds": round(result.seconds, 2),
            "msgs_per_s": round(result.rate, 1),
            **({"offered_msgs_per_s": round(result.offered_rate, 1),
                "arrivals_deferred": result.deferred} if result.load == "live" else {}),
            "worker_cpu_s": round(result.worker_cpu_s, 2),
            "redis_cpu_s": round(result.redis_cpu_s, 2),
            "worker_rss_mb": round(result.peak_rss_mb, 1),
            "p50_ms": round(result.p50_ms, 1), "p99_ms": round(result.p99_ms, 1),
            "violations": result.violations, "missing": result.missing,
            "duplicated": result.duplicated, "overlaps": result.overlaps}


def _targets(runs: Sequence[SystemRun]) -> tuple[dict[str, str], dict[str, bool]]:
    by = {(r.spec.label, r.latency_ms): r for r in runs}
    targets: dict[str, str] = {}
    met: dict[str, bool] = {}
    for latency in sorted({r.latency_ms for r in runs}, reverse=True):
        a, d, e = (by[(x, latency)] for x in "ade")
        for run, share in ((d, HOSTS_K1_OVER_THREADS), (e, HOSTS_K8_OVER_THREADS)):
            key = f"{run.spec.label}_burst_over_a_{latency}ms"
            targets[key] = f">= {share}"
            met[key] = run.burst.rate >= share * a.burst.rate
        key = f"e_live_p99_{latency}ms"
        targets[key] = f"<= {LIVE_P99_OVER_LATENCY * latency:.0f} ms"
        met[key] = e.live.p99_ms <= LIVE_P99_OVER_LATENCY * latency
    for label in ("d", "e"):
        key = f"{label}_rss_mb"
        targets[key] = f"<= {HOSTS_RSS_MB:.0f} in every load"
        met[key] = all(max(r.burst.peak_rss_mb, r.live.peak_rss_mb) <= HOSTS_RSS_MB
                       for r in runs if r.spec.label == label)
    for label in ORDERED:
        key = f"{label}_order_kept"
        targets[key] = "0 violations, 0 missing, 0 duplicated in every load"
        met[key] = all(not (x.violations or x.missing or x.duplicated)
                       for r in runs if r.spec.label == label for x in (r.burst, r.live))
    return targets, met


def llm_latency(runs: Sequence[SystemRun], curve: Sequence[CurvePoint],
                moonshot: tuple[float, LoadResult]) -> dict[str, Any]:
    targets, met = _targets(runs)
    ideal, moon = moonshot
    in_flight = moon.rate * MOONSHOT_LATENCY_MS / 1000
    by = {(r.spec.label, r.latency_ms): r for r in runs}
    return {
        "params": {"latencies_ms": sorted({r.latency_ms for r in runs}, reverse=True),
                   "burst": f"{BURST_USERS} users x {BURST_PER_USER} messages, shuffled, "
                            f"each user's in order",
                   "live": f"Poisson at {LIVE_SHARE:.0%} of the system's burst rate for "
                           f"{LIVE_DURATION_S:.0f} s; a user writes again only after their "
                           f"reply, drawn from {LIVE_POPULATION} users",
                   "rss": "peak of the summed RSS of every worker process (the process "
                          "trees the bench started), sampled every 0.5 s",
                   "latency": "delivered_at (worker) - sent_at (right before publishing)",
                   "overlaps": "(a), (b): messages started before the same user's previous "
                               "reply was written"},
        "systems": {r.spec.label: {"title": r.spec.title, "slots": r.spec.slots}
                    for r in runs},
        "runs": [{"system": r.spec.label, "latency_ms": r.latency_ms,
                  "ideal_msgs_per_s": round(r.ideal_rate, 1),
                  "burst": _load(r.burst), "live": _load(r.live)} for r in runs],
        "ratios": {f"{x}_burst_over_a_{lat}ms": round(by[(x, lat)].burst.rate
                                                      / by[("a", lat)].burst.rate, 2)
                   for (x, lat) in by if x in "de"},
        "hosted_shards_curve": {
            "latency_ms": CURVE_LATENCY_MS, "users": CURVE_USERS,
            "setup": "one shard host, SHARD_CONCURRENCY=1, SHARD_HOST_THREADS = shards",
            "points": [{"shards": p.shards, "ideal_msgs_per_s": round(p.ideal_rate, 1),
                        "busiest_shard_msgs_per_s": round(p.busiest_shard_rate, 1),
                        **_load(p.burst)} for p in curve]},
        "moonshot": {"system": MOONSHOT.title, "latency_ms": MOONSHOT_LATENCY_MS,
                     "burst": f"{MOONSHOT_USERS} users x {MOONSHOT_PER_USER} messages",
                     "ideal_msgs_per_s": round(ideal, 1), **_load(moon),
                     "in_flight": round(in_flight),
                     "order_kept": not (moon.violations or moon.missing or moon.duplicated)},
        "targets": targets,
        "met": met,
    }


def print_llm(data: dict[str, Any], console: Console) -> None:
    llm = data["llm_latency"]
    table = Table(title="LLM latency: burst of 200 x 5, then live Poisson load at 80% of the "
                        "burst rate")
    for column in ("system", "L ms", "msgs/s", "offered", "ideal", "RSS MB", "CPU s",
                   "p50 ms", "p99 ms", "viol.", "overl.", "miss."):
        table.add_column(column, justify="left" if column == "system" else "right")
    for run in llm["runs"]:
        for load in ("burst", "live"):
            x = run[load]
            offered = f"{x['offered_msgs_per_s']:.1f}" if load == "live" else "-"
            table.add_row(f"({run['system']}) {load}", str(run["latency_ms"]),
                          f"{x['msgs_per_s']:.1f}", offered, f"{run['ideal_msgs_per_s']:.0f}",
                          f"{x['worker_rss_mb']:.0f}", f"{x['worker_cpu_s']:.1f}",
                          f"{x['p50_ms']:.0f}", f"{x['p99_ms']:.0f}", str(x["violations"]),
                          "-" if x["overlaps"] is None else str(x["overlaps"]),
                          str(x["missing"]))
    console.print(table)
    for label, system in llm["systems"].items():
        console.print(f"  ({label}) {system['title']}")
    curve = llm["hosted_shards_curve"]
    console.print("one host, shards hosted -> msgs/s at L = "
                  f"{curve['latency_ms']} ms: " + ", ".join(
                      f"{p['shards']}: {p['msgs_per_s']:.0f} (ideal {p['ideal_msgs_per_s']:.0f})"
                      for p in curve["points"]))
    moon = llm["moonshot"]
    console.print(f"moonshot: {moon['in_flight']} conversations in flight at L = "
                  f"{moon['latency_ms']} ms ({moon['msgs_per_s']:.0f} msgs/s, "
                  f"order {'kept' if moon['order_kept'] else '[red]NOT kept[/red]'}; "
                  f"{moon['system']}, {moon['worker_rss_mb']:.0f} MB)")
    for key, target in llm["targets"].items():
        verdict = "[green]met[/green]" if llm["met"][key] else "[red]NOT met[/red]"
        console.print(f"  target {key} {target}: {verdict}")
