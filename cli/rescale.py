"""``shardline rescale M``: change the number of shards while producers keep sending.

One Lua call (``routing.shardmap.switch_epoch``) sets the map to ``M`` shards at epoch E+1,
records the old count, and puts an ``epoch_barrier(E+1, s)`` marker at the tail of every old
shard queue ``s``. Producers are fenced on the epoch, so every message routed under E is
already ahead of its queue's marker. A moved user's new messages wait on their new shard
until the old shard's worker reaches its marker (``services.barrier``). This command prints
how many users move, then (unless ``--no-wait``) shows each old shard's progress towards its
marker until all have passed and every removed shard has drained and stopped.

With ``--supervisor`` it regenerates the supervisord config for ``0..M-1`` (keeping the
file's ``--no-workloads`` / ``--no-beat`` choices) and runs ``supervisorctl reread`` and
``update``: right after the switch when growing (the new shards need workers), after the
drain when shrinking (the removed workers have exited by then).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import click
import redis
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import celeryconfig
from cli.connection import redis_client
from deploy.supervisor import render as render_supervisor
from routing import keys, producer_app
from routing.envelope import EnvelopeBuilder
from routing.hashing import shard_for
from routing.queues import EPOCH_BARRIER, shard_queue
from routing.shardmap import (
    RescaleRefused,
    ShardMap,
    barrier_states,
    epoch_counts,
    read_shard_map,
    switch_epoch,
)
from services.barrier import shard_drained_away

#: Seconds between two looks at the old shards while waiting.
POLL_S = 0.2


def moved_fraction(old: int, new: int, sample: int) -> float:
    """Share of ``sample`` user ids (``0 .. sample-1``) whose shard differs between counts."""
    moved = sum(1 for user in range(sample) if shard_for(user, old) != shard_for(user, new))
    return moved / sample


def expected_moved(old: int, new: int) -> tuple[float, str]:
    """Jump hashing's expected moved share and how it is derived."""
    if new >= old:
        return 1 - old / new, f"1 - {old}/{new}: the users that land on the new shards"
    return 1 - new / old, f"1 - {new}/{old}: the users of the removed shards"


def _shards(first: int, last: int) -> str:
    return f"{first}" if first == last else f"{first}-{last}"


def _markers(old: int, epoch: int) -> list[tuple[str, str]]:
    builder = EnvelopeBuilder(producer_app())
    return [(shard_queue(s), builder.build(EPOCH_BARRIER, (epoch, s), {}, queue=shard_queue(s),
                                           epoch=epoch, numbered=False)[1])
            for s in range(old)]


def _ahead_of(client: redis.Redis, queue: str, marker: str) -> int:
    """Messages the shard still runs before ``marker`` (0 once the marker was taken)."""
    index = client.lpos(queue, marker)
    if index is None:
        return 0
    return int(client.llen(queue)) - 1 - int(index)  # type: ignore[arg-type]


def _removed_busy(client: redis.Redis, old: int, new: int, *, until_stopped: bool) -> list[int]:
    """Removed shards not drained away yet, or (``until_stopped``) whose worker still holds
    its lease (a worker under the shard runner exits by itself once its shard drained)."""
    default = celeryconfig.settings.shard_count
    return [s for s in range(new, old) if not shard_drained_away(client, s, default)
            or (until_stopped and client.exists(keys.shard_lease(s)))]


def _wait(console: Console, client: redis.Redis, before: ShardMap, epoch: int,
          markers: list[tuple[str, str]], new: int, *, supervised: bool) -> float:
    started = time.monotonic()
    ahead = [_ahead_of(client, q, m) for q, m in markers]
    with Progress(TextColumn("{task.description:<10}"), BarColumn(),
                  TextColumn("{task.fields[state]}"), TimeElapsedColumn(),
                  console=console) as progress:
        rows = [progress.add_task(queue, total=max(n, 1), state=f"{n} ahead of the marker")
                for (queue, _), n in zip(markers, ahead, strict=True)]
        while True:
            states = barrier_states(client, epoch)
            for s, ((queue, marker), row) in enumerate(zip(markers, rows, strict=True)):
                state = states.get(s)
                if state == "released":
                    progress.update(row, completed=progress.tasks[row].total, state="passed")
                else:
                    left = _ahead_of(client, queue, marker)
                    progress.update(row, completed=max(ahead[s] - left, 0),
                                    state=f"{left} ahead of the marker")
            if sum(1 for v in states.values() if v == "released") == before.count:
                break
            time.sleep(POLL_S)
    took = time.monotonic() - started
    console.print(f"all {before.count} old shards passed their markers in {took:.1f}s")
    if new < before.count:
        removed = _shards(new, before.count - 1)
        # Under supervisor the config update stops them (supervisord would restart a worker
        # that exits by itself); the shard runner lets them exit and does not restart them.
        stop = "" if supervised else " and their workers to stop"
        console.print(f"waiting for removed shard(s) {removed} to drain{stop}")
        # Drained for two map refreshes in a row: by then no process still routes a
        # send_task of an ordered task by name by its cached copy of the old map (unfenced;
        # routing.send, apply_async and control messages are fenced). shard_retire waits as
        # long.
        quiet_s = 2 * celeryconfig.settings.shard_map_refresh_s
        quiet_since: float | None = None
        while quiet_since is None or time.monotonic() - quiet_since < quiet_s:
            busy = _removed_busy(client, before.count, new, until_stopped=not supervised)
            quiet_since = None if busy else (quiet_since or time.monotonic())
            time.sleep(POLL_S)
        console.print(f"removed shard(s) {removed} drained{stop and '; their workers stopped'}"
                      f" after {time.monotonic() - started:.1f}s")
    return took


def _supervisor_update(console: Console, conf: Path, count: int) -> None:
    settings = celeryconfig.settings
    first_line = conf.read_text().splitlines()[0] if conf.exists() else ""

    def flag(name: str, default: int) -> int:
        found = re.search(rf"--{name} (\d+)", first_line)
        return int(found.group(1)) if found else default

    # Hosts follow the map by themselves (the rewrite changes nothing they run); a solo
    # deployment needs a worker per new shard.
    text = render_supervisor(0, count - 1, python=sys.executable,
                             with_workloads="--no-workloads" not in first_line,
                             with_beat="--no-beat" not in first_line,
                             workload_concurrency=settings.workload_concurrency,
                             runtime="solo" if "--runtime solo" in first_line else "hosts",
                             processes=flag("processes", settings.shard_processes),
                             concurrency=flag("concurrency", settings.shard_concurrency),
                             whole=True)
    partial = conf.with_name(conf.name + ".new")
    partial.write_text(text)
    partial.replace(conf)
    console.print(f"wrote {conf} for shards 0-{count - 1}")
    env = dict(os.environ, SHARDLINE_HOME=str(settings.home))
    for action in ("reread", "update"):
        done = subprocess.run(["supervisorctl", "-c", str(conf), action], env=env,
                              capture_output=True, text=True)
        output = (done.stdout + done.stderr).strip()
        console.print(f"supervisorctl {action}: {output or 'ok'}")
        if done.returncode != 0:
            raise click.ClickException(f"supervisorctl {action} failed ({done.returncode})")


@click.command()
@click.argument("count", type=click.IntRange(min=1))
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until every old shard has passed its barrier marker.")
@click.option("--supervisor", "use_supervisor", is_flag=True,
              help="Regenerate the supervisord config for the new count and reload it.")
@click.option("--supervisor-conf", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="The config --supervisor rewrites "
              "[default: $SHARDLINE_HOME/supervisord.conf].")
@click.option("--sample", default=100_000, show_default=True,
              help="User ids sampled for the moved fraction.")
def rescale(count: int, wait: bool, use_supervisor: bool, supervisor_conf: Path | None,
            sample: int) -> None:
    """Change the number of shard queues to COUNT while producers keep sending."""
    settings = celeryconfig.settings
    client = redis_client()
    if use_supervisor and count < read_shard_map(client,
                                                 settings.shard_count).count and not wait:
        raise click.ClickException("--supervisor with fewer shards must wait (the removed "
                                   "shards' workers drain before the config drops them)")
    conf = supervisor_conf or settings.home / "supervisord.conf"
    console = Console(soft_wrap=True)  # long lines stay whole in logs and pipes
    before = read_shard_map(client, settings.shard_count)
    assert before.epoch is not None
    if count == before.count:
        console.print(f"the shard map already has {count} shards (epoch {before.epoch})")
        if before.epoch:
            states = barrier_states(client, before.epoch)
            released = sum(1 for state in states.values() if state == "released")
            old = epoch_counts(client, settings.shard_count).get(before.epoch - 1, 0)
            console.print(f"{released} of {old} old shards have passed the barrier marker of "
                          f"epoch {before.epoch}")
        return
    epoch = before.epoch + 1
    markers = _markers(before.count, epoch)
    try:
        switch_epoch(client, expected=before, new_count=count, markers=markers)
    except RescaleRefused as exc:
        raise click.ClickException(f"rescale refused: {exc}") from exc
    console.print(f"shard map: {before.count} shards (epoch {before.epoch}) -> {count} shards "
                  f"(epoch {epoch})")
    share, why = expected_moved(before.count, count)
    console.print(f"moved users: {moved_fraction(before.count, count, sample):.2%} of "
                  f"{sample:,} sampled user ids (expected {why} = {share:.2%})")
    console.print(f"barrier markers queued on shard.{_shards(0, before.count - 1)}")
    if use_supervisor and count > before.count:
        _supervisor_update(console, conf, count)
    if not wait:
        return
    try:
        _wait(console, client, before, epoch, markers, count, supervised=use_supervisor)
    except KeyboardInterrupt:
        console.print("stopped waiting; the rescale goes on by itself")
        raise SystemExit(130) from None
    if use_supervisor and count < before.count:
        _supervisor_update(console, conf, count)
