"""``bench/scale.png``: the scale curve of solo shard workers and, beside it, msgs/s of one
shard host against the shards it hosts (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402


def plot_scale(data: dict[str, Any], path: Path) -> None:
    """Left: solo workers' throughput (median, with the rounds' range) and CPU cores busy per
    worker count. Right: one shard host's burst rate per shards hosted, against the ideal."""
    fig, (ax, hosted) = plt.subplots(1, 2, figsize=(13, 4.2), dpi=110)
    _solo_panel(ax, data)
    _hosted_panel(hosted, data["llm_latency"]["hosted_shards_curve"])
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _powers_of_two_axes(ax: Any, xs: list[int], xlabel: str, ylabel: str) -> None:
    """A log2 x axis ticked at ``xs``, a y axis from 0, a light grid."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)


def _hosted_panel(ax: Any, curve: dict[str, Any]) -> None:
    points = curve["points"]
    shards = [p["shards"] for p in points]
    ax.plot(shards, [p["msgs_per_s"] for p in points], marker="o", color="tab:blue",
            label="measured (burst)")
    ax.plot(shards, [p["ideal_msgs_per_s"] for p in points], linestyle="--", color="tab:gray",
            label="ideal: shards / latency")
    ax.plot(shards, [p["busiest_shard_msgs_per_s"] for p in points], linestyle=":",
            color="tab:green", label="the burst's busiest shard allows (K = 1)")
    _powers_of_two_axes(ax, shards, "shards hosted by one process (K = 1, a worker thread per "
                        "shard)", "msgs/s")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"one shard host, L = {curve['latency_ms']} ms, {curve['users']} users",
                 fontsize=10)


def _solo_panel(ax: Any, data: dict[str, Any]) -> None:
    curve = data["scale"]
    points = curve["points"]
    workers = [p["workers"] for p in points]
    rate = [p["tasks_per_s"] for p in points]
    low = [p["tasks_per_s"] - min(p["rounds_tasks_per_s"]) for p in points]
    high = [max(p["rounds_tasks_per_s"]) - p["tasks_per_s"] for p in points]
    nproc = data["machine"]["nproc"]

    ax.errorbar(workers, rate, yerr=[low, high], marker="o", capsize=4, color="tab:blue",
                label="solo shard workers (median, range of rounds)")
    naive = data["ordered_throughput"]["naive_prefork_c4"]["tasks_per_s"]
    ax.axhline(naive, color="tab:gray", linestyle=":",
               label=f"1 prefork worker -c 4 on one queue: {naive:.0f}")
    _powers_of_two_axes(ax, workers, "shard workers (SHARD_COUNT)", "ordered tasks/s (no-op AI)")

    cores = ax.twinx()
    cores.plot(workers, [p["cpu_cores_busy"] for p in points], marker="s", color="tab:orange",
               linestyle="--", label="cores busy: workers + Redis")
    cores.plot(workers, [p["machine_cores_busy"] for p in points], marker="^",
               color="tab:green", linestyle=":", label="cores busy: whole machine")
    cores.axhline(nproc, color="tab:red", linestyle="--", linewidth=1,
                  label=f"all {nproc} CPU cores busy")
    cores.set_ylabel("CPU cores busy")
    cores.set_ylim(0, max(nproc + 0.5, max(p["machine_cores_busy"] for p in points) + 0.5))

    lines, labels = ax.get_legend_handles_labels()
    more, more_labels = cores.get_legend_handles_labels()
    ax.legend(lines + more, labels + more_labels, loc="lower right", fontsize=8)
    ax.set_title(f"{curve['tasks_per_round']} ordered tasks drained; flat after "
                 f"{curve['flattens_after_workers']} workers", fontsize=10)
