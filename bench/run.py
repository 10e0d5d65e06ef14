"""``make bench``: ordered throughput (shards vs naive prefork vs shard hosts), the same two
first deployments on a no-op reference task (bench.noop), the scale curve (1, 2, 4, 8 shard
workers), head-of-line blocking, publish rates, and the LLM-latency section (bench.llm: five
systems at two reply latencies, the hosted-shards curve, the moonshot).

See bench/drain.py for how a drain is timed. The deployments run side by side (each on its
own private Redis) and their drains alternate round by round on the same backlog, so load
from anything else on the machine falls on all alike. bench/hol.py measures head-of-line
blocking. Writes bench/results.json and bench/scale.png; exits 1 when a target is missed
(the CPU per task of shard hosts, and the LLM-latency section's targets: bench.llm.report).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from bench.drain import DrainResult
from bench.hol import SLOW_MS as HOL_SLOW_MS
from bench.hol import HolResult, measure_hol, pick_users
from bench.host_drain import HOSTS, cpu_hosts, drain_hosts
from bench.llm.report import llm_latency, print_llm
from bench.llm.section import measure_hosted_curve, measure_moonshot, measure_systems
from bench.llm.systems import running
from bench.load import backlog, per_shard
from bench.machine import machine_info
from bench.plot import plot_scale
from bench.report import (
    head_of_line,
    print_hol,
    print_scale,
    print_table,
    reference,
    results,
    scale,
    write_json,
)
from bench.scenarios import (
    LOGLEVEL,
    SHARDS,
    hol_deployment,
    naive_deployment,
    publish_rates,
    shards_deployment,
)

USERS = 300
PER_USER = 10  # 3000 ordered tasks per drain
#: Reference drains of the no-op task (bench.noop), on the same two deployments.
NOOP_TASKS = 3000
DRAIN_ROUNDS = 3
WARMUP_USERS = 40
PUBLISH_MESSAGES = 1000
PUBLISH_BATCH = 500
PUBLISH_ROUNDS = 5
#: Shard worker counts of the scale curve (SHARDS among them: that point is also (1)).
SCALE_WORKERS = (1, 2, 4, 8)
HOL_SHARDS = 2
RESULTS = Path(__file__).resolve().parent / "results.json"
SCALE_PNG = RESULTS.parent / "scale.png"


@dataclass
class Drains:
    #: Shard worker count -> its ordered drains (SHARDS among them: that is (1)).
    curve: dict[int, list[DrainResult]]
    naive: list[DrainResult]
    #: Shard hosts (HOSTS of them) with SHARDS shards, K = 1, on the same backlogs.
    hosts: list[DrainResult]
    #: Messages per shard (of SHARDS) of each round's backlog.
    spreads: list[list[int]]
    #: The reference: no-op drains of SHARDS solo workers and of the naive worker.
    noop_shards: list[DrainResult]
    noop_naive: list[DrainResult]


def _drains(work_dir: Path, console: Console) -> Drains:
    warmup = backlog(WARMUP_USERS, 1, prefix="warm")
    curve: dict[int, list[DrainResult]] = {k: [] for k in SCALE_WORKERS}
    naive: list[DrainResult] = []
    hosts: list[DrainResult] = []
    spreads: list[list[int]] = []
    with ExitStack() as stack:
        console.print(f"starting {', '.join(map(str, SCALE_WORKERS))} solo shard workers "
                      f"(one deployment each), 1 prefork worker (-c 4) and {HOSTS} shard "
                      f"hosts ({SHARDS} shards) ...")
        sharded = {k: stack.enter_context(shards_deployment(work_dir, warmup, k))
                   for k in SCALE_WORKERS}
        plain = stack.enter_context(naive_deployment(work_dir, warmup))
        hosted = stack.enter_context(running(cpu_hosts(SHARDS), 0, work_dir, loglevel=LOGLEVEL))
        for n in range(DRAIN_ROUNDS):
            tasks = backlog(USERS, PER_USER, prefix=f"r{n}u", seed=n)
            spreads.append(per_shard(tasks, SHARDS))
            for k, deployment in sharded.items():
                curve[k].append(deployment.drain(tasks))
            naive.append(plain.drain(tasks))
            hosts.append(drain_hosts(hosted, tasks))
            rates = ", ".join(f"{k}: {curve[k][-1].rate:.0f}" for k in SCALE_WORKERS)
            console.print(f"  round {n + 1}: shard workers {rates} tasks/s; naive "
                          f"{naive[-1].rate:.0f} tasks/s; hosts {hosts[-1].rate:.0f} tasks/s; "
                          f"{SHARDS} shards {curve[SHARDS][-1].cpu_ms_per_task:.2f} CPU "
                          f"ms/task, naive {naive[-1].cpu_ms_per_task:.2f}, hosts "
                          f"{hosts[-1].cpu_ms_per_task:.2f}; per shard (4) {spreads[-1]}")
        noop_shards: list[DrainResult] = []
        noop_naive: list[DrainResult] = []
        for n in range(DRAIN_ROUNDS):
            noop_shards.append(sharded[SHARDS].drain_noops(NOOP_TASKS))
            noop_naive.append(plain.drain_noops(NOOP_TASKS))
            console.print(f"  no-op round {n + 1}: {SHARDS} shard workers "
                          f"{noop_shards[-1].rate:.0f} tasks/s, naive "
                          f"{noop_naive[-1].rate:.0f} tasks/s")
    return Drains(curve, naive, hosts, spreads, noop_shards, noop_naive)


def _head_of_line(work_dir: Path, console: Console) -> HolResult:
    console.print(f"head-of-line blocking ({HOL_SLOW_MS} ms slow user, {HOL_SHARDS} shards) ...")
    warmup = backlog(WARMUP_USERS, 1, prefix="warm")
    with hol_deployment(work_dir, warmup, HOL_SHARDS, HOL_SLOW_MS) as deployment:
        return measure_hol(deployment.app, deployment.client, pick_users(HOL_SHARDS),
                           deployment.workers.check_alive)


def main() -> int:
    console = Console()
    started = time.monotonic()
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    work_dir = Path(tempfile.mkdtemp(prefix="shardline-bench-"))
    ok = False
    try:
        drains = _drains(work_dir, console)
        hol = _head_of_line(work_dir, console)
        console.print("publish rate ...")
        published = backlog(PUBLISH_MESSAGES // 10, 10, prefix="p")
        publish = publish_rates(work_dir, published, PUBLISH_BATCH, PUBLISH_ROUNDS)
        say = console.print
        llm_runs = measure_systems(work_dir, say)
        say("msgs/s against shards hosted by one process ...")
        curve = measure_hosted_curve(work_dir, say)
        moonshot = measure_moonshot(work_dir, say)
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
              "backlog_per_shard": drains.spreads, "noop_tasks_per_round": NOOP_TASKS,
              "publish_messages_per_round": PUBLISH_MESSAGES,
              "publish_batch": PUBLISH_BATCH, "publish_rounds": PUBLISH_ROUNDS,
              "ai_latency_ms": 0, "worker_loglevel": "INFO",
              "scale_workers": list(SCALE_WORKERS)}
    data = results(machine, drains.curve[SHARDS], drains.naive, drains.hosts, publish, params)
    data["reference_noop"] = reference(drains.noop_shards, drains.noop_naive)
    data["scale"] = scale(drains.curve, machine["nproc"])
    data["head_of_line"] = head_of_line(hol, HOL_SLOW_MS, HOL_SHARDS)
    data["llm_latency"] = llm_latency(llm_runs, curve, moonshot)
    data["bench_wall_s"] = round(time.monotonic() - started, 1)
    print_table(data, console)
    print_scale(data, console)
    print_hol(data, console)
    print_llm(data, console)
    write_json(data, RESULTS)
    plot_scale(data, SCALE_PNG)
    console.print(f"wrote {RESULTS} and {SCALE_PNG} ({data['bench_wall_s']:.0f} s in all)")
    met = [*data["met"].values(), *data["llm_latency"]["met"].values()]
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
