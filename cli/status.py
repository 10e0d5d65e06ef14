"""``shardline status``: the deployment at a glance, once or refreshed with ``--watch``.

Shards (depth, oldest waiting message, lease holder, heartbeat, recent rate), workload queues
(depth per priority sub-list), dead letters, duplicates, order violations and the breaker.
Every figure comes from ``metrics.readings``, the functions the Prometheus collector uses, so
the two never disagree. It only reads.
"""

from __future__ import annotations

import time

import click
import redis
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

import celeryconfig
from cli.connection import redis_client
from metrics.readings import (
    DeploymentReading,
    deployment_breakers,
    read_deployment,
    read_rates,
)
from metrics.schema import RATE_WINDOW_S
from routing.kombu_lists import priority_lists
from services.breaker import BreakerState

#: The shortest --watch interval: one drawing costs about 70-90 Redis commands, so 0 would make
#: the command a busy loop against the deployment's Redis (about 680 commands/s at 0.1 s).
MIN_WATCH_S = 0.5


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def render(d: DeploymentReading, rates: dict[str, float]) -> Group:
    """The status tables of one reading, ``rates`` being tasks/s by queue."""
    shards = Table(title=f"{d.shard_map.count} shards, epoch {d.shard_map.epoch or 0} "
                         f"(tasks/s over the last {RATE_WINDOW_S} s)", title_justify="left")
    for column in ("shard", "depth", "oldest", "lease holder", "heartbeat", "tasks/s",
                   "out of order"):
        shards.add_column(column, justify="left" if column in ("shard", "lease holder")
                          else "right", no_wrap=column == "lease holder")
    for s in d.shards:
        name = f"{s.queue.name} (draining)" if s.retired else s.queue.name
        shards.add_row(name, str(s.queue.depth), _seconds(s.queue.oldest_age_s(d.read_at)),
                       s.lease.holder if s.lease else "[red]none[/]",
                       _seconds(s.heartbeat_age_s), f"{rates.get(s.queue.name, 0.0):.2f}",
                       str(d.order_violations.get(s.shard, 0)))
    workloads = Table(title="workload queues", title_justify="left")
    steps = [step for step, _ in priority_lists("")]
    for column in ("queue", *(f"p{step}" for step in steps), "depth", "oldest"):
        workloads.add_column(column, justify="left" if column == "queue" else "right")
    for q in d.workload_queues:
        workloads.add_row(q.name, *(str(q.by_priority.get(step, 0)) for step in steps),
                          str(q.depth), _seconds(q.oldest_age_s(d.read_at)))
    lines = [f"dead letters: {d.dead_letters}",
             f"duplicates dropped: {d.duplicates_dropped}"]
    for name, b in sorted(d.breakers.items()):
        line = f"breaker {name}: {b.state.value}, {b.failures} consecutive failures"
        if b.state is BreakerState.OPEN:
            line += f", open for {b.open_for_s:.1f}s more"
        lines.append(line)
    return Group(shards, workloads, "\n".join(lines))


def snapshot(client: redis.Redis, settings: celeryconfig.Settings) -> Group:
    reading = read_deployment(client, default_shard_count=settings.shard_count,
                              breakers=deployment_breakers(client, settings))
    rates = read_rates(client, [s.queue.name for s in reading.shards], now=reading.read_at)
    return render(reading, rates)


@click.command()
@click.option("--watch", "watch_s", type=click.FloatRange(min=MIN_WATCH_S), is_flag=False,
              flag_value=2.0, default=None, metavar="[SECONDS]",
              help=f"Refresh every SECONDS (2 if omitted, at least {MIN_WATCH_S:g}) until Ctrl-C.")
def status(watch_s: float | None) -> None:
    """Shards, workload queues, dead letters and the breaker, read from Redis."""
    settings = celeryconfig.settings
    client = redis_client()
    console = Console(highlight=False)
    try:
        if watch_s is None:
            console.print(snapshot(client, settings))
            return
        with Live(snapshot(client, settings), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(watch_s)
                live.update(snapshot(client, settings), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
