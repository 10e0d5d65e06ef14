"""``make demo``: a whole deployment on the embedded Redis, a chat load, and a report."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.chatload import chat_load, check_order, delivered_count, stamp
from deploy.launcher import procfile_running, redis_for, wait_for_workers
from routing import dispatch_batch, producer_app
from routing.credentials import redact_url
from routing.queues import shard_queue
from services.redis_client import connect


def run_demo(settings: Any, *, users: int, messages: int, proactive_every: int,
             timeout_s: float) -> int:
    console = Console()
    settings.home.mkdir(parents=True, exist_ok=True)
    with redis_for(settings) as url:
        console.print(f"[bold]shardline demo[/]: Redis at {redact_url(url)}, "
                      f"{settings.shard_count} shards, {users} users x {messages} messages")
        import os

        os.environ["REDIS_URL"] = url
        app = producer_app()
        app.conf.broker_url = url
        from deploy.embedded_redis import free_port
        from routing.queues import WORKLOAD_QUEUES

        with procfile_running(url, quiet=True, API_PORT=str(free_port()),
                              METRICS_PORT=str(free_port())):
            wait_for_workers(app, [shard_queue(s) for s in range(settings.shard_count)]
                             + list(WORKLOAD_QUEUES))
            chat = _play(console, app, url, users, messages, proactive_every, timeout_s)
            from cli.demo_work import show_jobs_and_promises

            return chat or show_jobs_and_promises(console, app, url, settings)


def _play(console: Console, app: Any, url: str, users: int, messages: int,
          proactive_every: int, timeout_s: float) -> int:
    client = connect(url)
    user_ids: list[int | str] = list(range(1, users + 1))
    # Message ids are idempotency keys (DEDUP_WINDOW_S): make them unique to this run, or a
    # second demo on the same embedded Redis would be all duplicates.
    run = f"demo{int(time.time() * 1000)}"
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
            progress.update(answered, completed=delivered_count(client))
        deadline = time.monotonic() + timeout_s
        while (done := delivered_count(client)) < total and time.monotonic() < deadline:
            progress.update(answered, completed=done)
            time.sleep(0.1)
        progress.update(answered, completed=delivered_count(client))
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
    table.add_row("throughput", f"{report.answered / elapsed:.0f} msg/s")
    table.add_row("latency p50 (send->delivery)", f"{report.percentile(50) * 1000:.0f} ms")
    table.add_row("latency p99 (send->delivery)", f"{report.percentile(99) * 1000:.0f} ms")
    console.print(table)
    client.close()
    if not report.ok:
        console.print(f"[red]FAILED[/]: users out of order or incomplete: {report.bad_users[:10]}")
        return 1
    console.print("[green]OK[/]: every user's replies delivered, in order")
    return 0
