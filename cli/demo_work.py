"""The jobs-and-promises part of ``make demo``: a few jobs and a small promise DAG, watched
until they finish (a few seconds), then a table of what they produced."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from jobs.control import create_job
from jobs.store import JobStore
from promises.runtime import promise_service
from promises.service import PromiseSpec
from services.redis_client import connect


def show_jobs_and_promises(console: Console, app: Any, url: str, settings: Any,
                           timeout_s: float = 60.0) -> int:
    """Returns 0 when every job completed and every promise reached its expected state."""
    store = JobStore(connect(url), ttl_s=settings.job_ttl_s)
    jobs = [create_job(store, app, kind="profiling", owner="demo", priority=p,
                       params={"rows": 400, "seed": p, "item_delay_ms": 5}) for p in (0, 6)]
    jobs.append(create_job(store, app, kind="llm", owner="demo", priority=3,
                           params={"prompts": [f"summarise chapter {i}" for i in range(30)],
                                   "item_delay_ms": 20}))
    service = promise_service(app, settings)
    run = f"demo{int(time.time())}"
    dag = service.create([
        PromiseSpec("demo-user", "sum", "fetch A", {"value": 20, "delay_ms": 300}, id=f"{run}-a"),
        PromiseSpec("demo-user", "sum", "fetch B", {"value": 22, "delay_ms": 300}, id=f"{run}-b"),
        PromiseSpec("demo-user", "sum", "combine", {"value": 0}, parents=[f"{run}-a", f"{run}-b"],
                    id=f"{run}-c"),
        PromiseSpec("demo-user", "fail", "flaky step", {"reason": "demo failure"}, id=f"{run}-f"),
        PromiseSpec("demo-user", "echo", "after flaky", {"text": "never"}, parents=[f"{run}-f"],
                    id=f"{run}-g"),
    ], owner="demo")
    deadline = time.monotonic() + timeout_s
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=console) as progress:
        bars = {j.id: progress.add_task(f"job {j.kind} (priority {j.priority})", total=j.total)
                for j in jobs}
        dag_bar = progress.add_task("promise DAG", total=len(dag))
        while time.monotonic() < deadline:
            records = [store.get(j.id) for j in jobs]
            for r in records:
                if r is not None:
                    progress.update(bars[r.id], completed=r.current)
            final = [p for p in (service.store.get(d.id) for d in dag) if p and p.status.final]
            progress.update(dag_bar, completed=len(final))
            if len(final) == len(dag) and all(r and r.status.finished for r in records):
                break
            time.sleep(0.1)
    table = Table(title="jobs and promises")
    for column in ("what", "status", "outcome"):
        table.add_column(column)
    ok = True
    for job in jobs:
        r = store.get(job.id)
        assert r is not None
        ok &= r.status.value == "completed"
        outcome = (f"age mean {r.result['age']['mean']}, cities {len(r.result['city'])}"
                   if r.kind == "profiling" and r.result else
                   f"{len(r.result['replies'])} replies" if r.result else r.error or "")
        table.add_row(f"job {r.kind} p{r.priority}", r.status.value, outcome)
    expected = {"fetch A": "completed", "fetch B": "completed", "combine": "completed",
                "flaky step": "failed", "after flaky": "failed"}
    for p in (service.store.get(d.id) for d in dag):
        assert p is not None
        ok &= expected[p.description] == p.status.value
        table.add_row(f"promise {p.description}", p.status.value,
                      str(p.result) if p.result is not None else (p.error or ""))
    console.print(table)
    return 0 if ok else 1
