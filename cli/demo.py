"""``make demo``: a whole deployment on the embedded Redis, a chat load, and a report."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.chatload import chat_load, check_order, delivered_to, stamp
from deploy.launcher import procfile_running, redis_for, wait_for_workers
from routing import ChatMessage, dispatch_batch, producer_app, shard_for
from routing.credentials import redact_url
from routing.queues import shard_queue
from services.redis_client import connect

#: Reply latency of the demo's offline responder when AI_LATENCY_MS is not set: an LLM call.
DEMO_LATENCY_MS = 300


def ideal_concurrency(settings: Any) -> int:
    """How many replies the deployment can have in flight at once: shards x SHARD_CONCURRENCY,
    bounded by the hosts' threads (a solo worker per shard: one per shard)."""
    if settings.shard_runtime == "solo":
        return int(settings.shard_count)
    return int(min(settings.shard_count * settings.shard_concurrency,
                   settings.shard_processes * settings.shard_host_threads))


def drain_floor_s(rounds: list[list[ChatMessage]], settings: Any, latency_ms: int) -> float:
    """The shortest time the load can take, however fast everything else is: a shard runs
    ``SHARD_CONCURRENCY`` replies at once, a user one at a time, each ``latency_ms`` long."""
    per_shard: Counter[int] = Counter()
    per_user: Counter[str] = Counter()
    for batch in rounds:
        for m in batch:
            if not m.proactive:
                per_shard[shard_for(m.user_id, settings.shard_count)] += 1
                per_user[str(m.user_id)] += 1
    per_slot = 1 if settings.shard_runtime == "solo" else settings.shard_concurrency
    busiest = max(per_shard.values(), default=0) / per_slot
    return max(busiest, max(per_user.values(), default=0)) * latency_ms / 1000


def run_demo(settings: Any, *, users: int, messages: int, proactive_every: int,
             timeout_s: float) -> int:
    console = Console()
    settings.home.mkdir(parents=True, exist_ok=True)
    latency_ms = settings.ai_latency_ms or DEMO_LATENCY_MS
    concurrency = ideal_concurrency(settings)
    with redis_for(settings) as url:
        shape = (f"{settings.shard_count} shards on {settings.shard_processes} shard hosts, "
                 f"SHARD_CONCURRENCY={settings.shard_concurrency}"
                 if settings.shard_runtime == "hosts"
                 else f"{settings.shard_count} solo shard workers")
        console.print(f"[bold]shardline demo[/]: Redis at {redact_url(url)}, {shape}, "
                      f"{users} users x {messages} messages, replies take {latency_ms} ms")
        import os

        os.environ["REDIS_URL"] = url
        app = producer_app()
        app.conf.broker_url = url
        from deploy.embedded_redis import free_port
        from routing.queues import MAINTENANCE_QUEUE, WORKLOAD_QUEUES

        with procfile_running(url, quiet=True, API_PORT=str(free_port()),
                              METRICS_PORT=str(free_port()), AI_LATENCY_MS=str(latency_ms)):
            wait_for_workers(app, [shard_queue(s) for s in range(settings.shard_count)]
                             + [*WORKLOAD_QUEUES, MAINTENANCE_QUEUE])
            chat = _play(console, app, url, users, messages, proactive_every, timeout_s,
                         ideal_msgs_s=concurrency / (latency_ms / 1000),
                         floor_s=lambda rounds: drain_floor_s(rounds, settings, latency_ms))
            from cli.demo_work import show_jobs_and_promises

            return chat or show_jobs_and_promises(console, app, url, settings)


def _play(console: Console, app: Any, url: str, users: int, messages: int,
          proactive_every: int, timeout_s: float, *, ideal_msgs_s: float,
          floor_s: Callable[[list[list[ChatMessage]]], float]) -> int:
    client = connect(url)
    # Users and message ids (idempotency keys, DEDUP_WINDOW_S) of this run only: a second
    # demo on the same Redis (the embedded one keeps its data in SHARDLINE_HOME) would
    # otherwise find the first run's replies in the same outboxes, or be all duplicates.
    run = f"demo{int(time.time() * 1000)}"
    user_ids: list[int | str] = [f"{run}-{n}" for n in range(1, users + 1)]
    rounds = [[replace(m, message_id=f"{run}-{m.message_id}") for m in batch]
              for batch in chat_load(user_ids, messages, proactive_every=proactive_every, seed=7)]
    total = sum(len(r) for r in rounds)
    expected: dict[str, int] = {}
    for batch in rounds:
        for m in batch:
            expected[str(m.user_id)] = expected.get(str(m.user_id), 0) + 1
    start = time.monotonic()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        sent = progress.add_task("sent", total=total)
        answered = progress.add_task("answered", total=total)
        for batch in rounds:
            dispatch_batch(app, stamp(batch))
            progress.advance(sent, len(batch))
            progress.update(answered, completed=delivered_to(client, expected))
        deadline = time.monotonic() + timeout_s
        while (done := delivered_to(client, expected)) < total and time.monotonic() < deadline:
            progress.update(answered, completed=done)
            time.sleep(0.1)
        progress.update(answered, completed=delivered_to(client, expected))
    elapsed = time.monotonic() - start
    report = check_order(client, expected)
    table = Table(title="demo report")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("messages sent", str(total))
    table.add_row("replies delivered", str(report.answered))
    table.add_row("missing replies", str(report.missing))
    table.add_row("duplicated replies", str(report.duplicated))
    table.add_row("order violations", str(report.violations))
    replies = sum(1 for batch in rounds for m in batch if not m.proactive)
    table.add_row("throughput", f"{report.answered / elapsed:.0f} msg/s")
    # Only replies wait on the AI handler; proactive messages need no call.
    table.add_row("AI replies per second", f"{replies / elapsed:.0f} msg/s")
    table.add_row("ideal (concurrency / latency)", f"{ideal_msgs_s:.0f} msg/s")
    table.add_row("of the ideal", f"{replies / elapsed / ideal_msgs_s:.0%}")
    floor = floor_s(rounds)
    table.add_row("shortest possible drain (busiest shard, busiest user)", f"{floor:.1f} s")
    table.add_row("drain took", f"{elapsed:.1f} s ({floor / elapsed:.0%} of the best case)")
    table.add_row("latency p50 (send->delivery)", f"{report.percentile(50) * 1000:.0f} ms")
    table.add_row("latency p99 (send->delivery)", f"{report.percentile(99) * 1000:.0f} ms")
    console.print(table)
    client.close()
    if not report.ok:
        console.print(f"[red]FAILED[/]: users out of order or incomplete: {report.bad_users[:10]}")
        return 1
    console.print("[green]OK[/]: every user's replies delivered, in order")
    return 0
