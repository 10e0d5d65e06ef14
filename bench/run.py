"""``make bench``: ordered throughput (shards vs naive prefork) and publish rates.

See bench/drain.py for how a drain is timed. Both deployments run side by side (each on its
own private Redis) and their drains alternate round by round, so load from anything else on
the machine falls on both alike. Exits 1 when a target is missed.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from bench.drain import DrainResult
from bench.load import backlog, per_shard
from bench.machine import machine_info
from bench.report import print_table, results, write_json
from bench.scenarios import SHARDS, naive_deployment, publish_rates, shards_deployment

USERS = 300
PER_USER = 10  # 3000 ordered tasks per drain
DRAIN_ROUNDS = 3
WARMUP_USERS = 40
PUBLISH_MESSAGES = 1000
PUBLISH_BATCH = 500
PUBLISH_ROUNDS = 5
RESULTS = Path(__file__).resolve().parent / "results.json"


def _drains(work_dir: Path, console: Console) -> tuple[list[DrainResult], list[DrainResult],
                                                       list[list[int]]]:
    warmup = backlog(WARMUP_USERS, 1, prefix="warm")
    shards: list[DrainResult] = []
    naive: list[DrainResult] = []
    spreads: list[list[int]] = []
    with ExitStack() as stack:
        console.print("starting 4 solo shard workers and 1 prefork worker (-c 4) ...")
        sharded = stack.enter_context(shards_deployment(work_dir, warmup))
        plain = stack.enter_context(naive_deployment(work_dir, warmup))
        for n in range(DRAIN_ROUNDS):
            tasks = backlog(USERS, PER_USER, prefix=f"r{n}u", seed=n)
            spreads.append(per_shard(tasks, SHARDS))
            shards.append(sharded.drain(tasks))
            naive.append(plain.drain(tasks))
            console.print(f"  round {n + 1}: shards {shards[-1].rate:.0f} tasks/s "
                          f"({shards[-1].cpu_ms_per_task:.2f} CPU ms/task), naive "
                          f"{naive[-1].rate:.0f} tasks/s ({naive[-1].cpu_ms_per_task:.2f} "
                          f"CPU ms/task); per shard {spreads[-1]}")
    return shards, naive, spreads


def main() -> int:
    console = Console()
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    work_dir = Path(tempfile.mkdtemp(prefix="shardline-bench-"))
    ok = False
    try:
        shards, naive, spreads = _drains(work_dir, console)
        console.print("publish rate ...")
        published = backlog(PUBLISH_MESSAGES // 10, 10, prefix="p")
        publish = publish_rates(work_dir, published, PUBLISH_BATCH, PUBLISH_ROUNDS)
        ok = True
    finally:
        if ok:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            console.print(f"[red]bench failed; worker and redis logs kept in {work_dir}[/red]")
    machine = machine_info()
    machine["loadavg_before"] = loadavg_before
    machine["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    params = {"shards": SHARDS, "users_per_round": USERS, "messages_per_user": PER_USER,
              "drain_rounds": DRAIN_ROUNDS, "warmup_messages": WARMUP_USERS,
              "backlog_per_shard": spreads, "publish_messages_per_round": PUBLISH_MESSAGES,
              "publish_batch": PUBLISH_BATCH, "publish_rounds": PUBLISH_ROUNDS,
              "ai_latency_ms": 0, "worker_loglevel": "INFO"}
    data = results(machine, shards, naive, publish, params)
    print_table(data, console)
    write_json(data, RESULTS)
    console.print(f"wrote {RESULTS}")
    return 0 if all(data["met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
