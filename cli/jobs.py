"""``shardline jobs``: create, inspect, pause, resume, cancel and watch jobs (as the operator)."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import celeryconfig
from cli.connection import redis_client
from jobs.control import cancel_job, create_job, owned_job, pause_job, resume_job
from jobs.errors import InvalidTransition, InvalidWork, NotOwner, WorkNotFound
from jobs.records import JobRecord
from jobs.store import JobStore
from routing import producer_app

ERRORS = (InvalidWork, WorkNotFound, NotOwner, InvalidTransition)


def _store() -> JobStore:
    return JobStore(redis_client(), ttl_s=celeryconfig.settings.job_ttl_s)


def _show(record: JobRecord, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(record.public()))
        return
    click.echo(f"{record.id}  {record.kind:<9} {record.status.value:<9} "
               f"{record.current}/{record.total} ({record.percent:.0f}%)  owner={record.owner} "
               f"priority={record.priority}  {record.error or ''}")


@click.group("jobs")
def jobs() -> None:
    """Long jobs on the workload queues (profiling, llm batch)."""


@jobs.command()
@click.argument("kind", type=click.Choice(["profiling", "llm"]))
@click.option("--priority", default=5, show_default=True, help="0 (highest) .. 9.")
@click.option("--owner", default="cli", show_default=True)
@click.option("--rows", type=int, default=1000, show_default=True, help="profiling: rows.")
@click.option("--seed", type=int, default=1, show_default=True, help="profiling: data seed.")
@click.option("--prompt", "prompts", multiple=True, help="llm: one prompt (repeatable).")
@click.option("--item-delay-ms", type=int, default=0, help="Slow each item down (demos).")
@click.option("--json", "as_json", is_flag=True)
def create(kind: str, priority: int, owner: str, rows: int, seed: int, prompts: tuple[str, ...],
           item_delay_ms: int, as_json: bool) -> None:
    """Queue a KIND job; prints its id and status."""
    params: dict[str, Any] = ({"rows": rows, "seed": seed} if kind == "profiling"
                              else {"prompts": list(prompts)})
    params["item_delay_ms"] = item_delay_ms
    try:
        record = create_job(_store(), producer_app(), kind=kind, owner=owner,
                            priority=priority, params=params)
    except ERRORS as exc:
        raise click.ClickException(str(exc)) from exc
    _show(record, as_json)


@jobs.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
def status(job_id: str, as_json: bool) -> None:
    """Status and progress of JOB_ID."""
    try:
        _show(owned_job(_store(), job_id, None), as_json)
    except ERRORS as exc:
        raise click.ClickException(str(exc)) from exc


@jobs.command("list")
@click.option("--owner", default=None, help="Only this owner's jobs.")
@click.option("--json", "as_json", is_flag=True)
def list_jobs(owner: str | None, as_json: bool) -> None:
    """Every job, newest first."""
    for record in _store().find(owner):
        _show(record, as_json)


def _control(action: str, job_id: str) -> None:
    store = _store()
    settings = celeryconfig.settings
    try:
        if action == "pause":
            record = pause_job(store, job_id, None)
        elif action == "resume":
            record = resume_job(store, producer_app(), job_id, None)
        else:
            record = cancel_job(store, producer_app(), job_id, None,
                                settings.job_cancel_grace_s)
    except ERRORS as exc:
        raise click.ClickException(str(exc)) from exc
    _show(record, False)


@jobs.command()
@click.argument("job_id")
def pause(job_id: str) -> None:
    """Pause JOB_ID at its next checkpoint."""
    _control("pause", job_id)


@jobs.command()
@click.argument("job_id")
def resume(job_id: str) -> None:
    """Resume JOB_ID right after its last checkpoint."""
    _control("resume", job_id)


@jobs.command()
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel JOB_ID (at its next checkpoint, or revoked after JOB_CANCEL_GRACE_S)."""
    _control("cancel", job_id)


@jobs.command()
@click.argument("job_id")
@click.option("--interval", default=0.2, show_default=True, help="Seconds between polls.")
def watch(job_id: str, interval: float) -> None:
    """Show JOB_ID's progress bar until it finishes or pauses."""
    store = _store()
    try:
        record = owned_job(store, job_id, None)
    except ERRORS as exc:
        raise click.ClickException(str(exc)) from exc
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                  console=Console()) as progress:
        bar = progress.add_task(f"{record.kind} {job_id[:8]}", total=record.total,
                                status=record.status.value)
        while True:
            record = owned_job(store, job_id, None)
            progress.update(bar, completed=record.current, status=record.status.value)
            if record.status.finished or record.status.value == "paused":
                break
            time.sleep(interval)
    _show(record, False)
