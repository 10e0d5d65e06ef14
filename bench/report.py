"""The results table (rich) and ``bench/results.json``."""

from __future__ import annotations

import datetime
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.drain import DrainResult
from bench.publish import PublishResult

ORDERED_TARGET = 1.5
PUBLISH_TARGET = 5.0


def _drain(rounds: Sequence[DrainResult]) -> dict[str, Any]:
    return {
        "tasks_per_round": rounds[0].tasks,
        "tasks_per_s": round(statistics.median(r.rate for r in rounds), 1),
        "cpu_ms_per_task": round(statistics.median(r.cpu_ms_per_task for r in rounds), 2),
        "rounds": [{"drain_s": round(r.seconds, 3), "wall_s": round(r.wall_seconds, 3),
                    "tasks_per_s": round(r.rate, 1),
                    "worker_cpu_s": round(r.worker_cpu_s, 2),
                    "redis_cpu_s": round(r.redis_cpu_s, 2), "order_violations": r.order_violations,
                    "missing": r.missing, "duplicated": r.duplicated} for r in rounds],
    }


def results(machine: dict[str, Any], shards: Sequence[DrainResult],
            naive: Sequence[DrainResult], publish: PublishResult,
            params: dict[str, Any]) -> dict[str, Any]:
    ordered_ratio = statistics.median(s.rate / n.rate for s, n in zip(shards, naive,
                                                                      strict=True))
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "params": params,
        "ordered_throughput": {"shards_4_solo": _drain(shards),
                               "naive_prefork_c4": _drain(naive)},
        "publish": {"messages_per_round": publish.messages, "batch_size": publish.batch_size,
                    "plain_msgs_per_s": round(publish.plain_rate, 1),
                    "batched_msgs_per_s": round(publish.batched_rate, 1),
                    "plain_s": [round(s, 3) for s in publish.plain_seconds],
                    "batched_s": [round(s, 3) for s in publish.batched_seconds]},
        "ratios": {"shards_over_naive": round(ordered_ratio, 2),
                   "batched_over_plain": round(publish.ratio, 2)},
        "ratio_method": "median over rounds of the ratio within each round (the two sides "
                        "of a ratio alternate, so other load on the machine hits both)",
        "targets": {"shards_over_naive": ORDERED_TARGET, "batched_over_plain": PUBLISH_TARGET},
        "met": {"shards_over_naive": ordered_ratio >= ORDERED_TARGET,
                "batched_over_plain": publish.ratio >= PUBLISH_TARGET},
    }


def write_json(data: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _rounds(side: dict[str, Any], key: str) -> str:
    return ", ".join(f"{r[key]:.0f}" for r in side["rounds"])


def print_table(data: dict[str, Any], console: Console) -> None:
    m = data["machine"]
    table = Table(title=f"shardline bench: {m['nproc']} cores, {m['ram_gib']} GiB, "
                        f"Python {m['python']}, Celery {m['celery']}, "
                        f"redis-server {m['redis_server']}")
    table.add_column("measurement")
    table.add_column("median", justify="right")
    table.add_column("notes")
    shards = data["ordered_throughput"]["shards_4_solo"]
    naive = data["ordered_throughput"]["naive_prefork_c4"]
    pub = data["publish"]
    for label, side in (("(1) 4 solo shard workers", shards),
                        ("(2) 1 prefork worker -c 4, one queue", naive)):
        violations = sum(r["order_violations"] for r in side["rounds"])
        table.add_row(label, f"{side['tasks_per_s']:.0f} tasks/s",
                      f"{side['tasks_per_round']} tasks/round; rounds "
                      f"{_rounds(side, 'tasks_per_s')} tasks/s; CPU (workers + redis) "
                      f"{side['cpu_ms_per_task']:.2f} ms/task; {violations} order violations")
    table.add_row("(3a) apply_async (send_task), one by one",
                  f"{pub['plain_msgs_per_s']:.0f} msgs/s",
                  f"{pub['messages_per_round']} msgs x {len(pub['plain_s'])} rounds")
    table.add_row("(3b) routing.dispatch_batch", f"{pub['batched_msgs_per_s']:.0f} msgs/s",
                  f"batches of {pub['batch_size']}")
    for key, label in (("shards_over_naive", "ratio (1)/(2)"),
                       ("batched_over_plain", "ratio (3b)/(3a)")):
        verdict = "[green]met[/green]" if data["met"][key] else "[red]NOT met[/red]"
        table.add_row(label, f"{data['ratios'][key]:.2f}x",
                      f"target >= {data['targets'][key]}: {verdict}")
    console.print(table)
    load = data["machine"].get("loadavg_before")
    if load is not None:
        console.print(f"load average before the run: {load}, after: "
                      f"{data['machine'].get('loadavg_after')}")
