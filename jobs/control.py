"""The producer side of jobs: create, pause, resume, cancel, recover lost runs, clean up.

Used by the API, the CLI and the beat maintenance task. Sends by task name through a Celery
client app, so it never imports worker code.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from celery import Celery

from jobs.errors import InvalidTransition, InvalidWork, NotOwner, WorkNotFound
from jobs.kinds import kind_named
from jobs.records import JobRecord, JobStatus
from jobs.store import JobStore

#: Task that revokes a running job which ignored a cancel for ``JOB_CANCEL_GRACE_S``.
ENFORCE_CANCEL = "shardline.jobs.enforce_cancel"


def _dispatch(app: Celery, record: JobRecord) -> None:
    kind = kind_named(record.kind)
    app.send_task(kind.task_name, args=(record.id,), priority=record.priority)


def create_job(store: JobStore, app: Celery, *, kind: str, owner: str, priority: int,
               params: dict[str, Any]) -> JobRecord:
    """Validate, store and queue a job; nothing is stored if validation fails."""
    job_kind = kind_named(kind)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise InvalidWork("priority", f"must be an integer 0..9 (0 highest), got {priority!r}")
    clean = job_kind.validate(params)
    record = JobRecord(id=uuid.uuid4().hex, kind=kind, owner=owner, priority=priority,
                       status=JobStatus.QUEUED, params=clean, total=job_kind.total(clean))
    store.create(record)
    _dispatch(app, record)
    created = store.get(record.id)
    assert created is not None
    return created


def owned_job(store: JobStore, job_id: str, owner: str | None) -> JobRecord:
    """The job, if it exists and ``owner`` (None: the operator) may see it."""
    record = store.get(job_id)
    if record is None:
        raise WorkNotFound(f"no job {job_id!r}")
    if owner is not None and record.owner != owner:
        raise NotOwner(f"job {job_id!r} belongs to another owner")
    return record


def pause_job(store: JobStore, job_id: str, owner: str | None) -> JobRecord:
    owned_job(store, job_id, owner)
    if store.control(job_id, "pause") == "finished":
        raise InvalidTransition(f"job {job_id!r} has finished and cannot be paused")
    return owned_job(store, job_id, owner)


def resume_job(store: JobStore, app: Celery, job_id: str, owner: str | None) -> JobRecord:
    owned_job(store, job_id, owner)
    outcome = store.control(job_id, "resume")
    if outcome == "finished":
        raise InvalidTransition(f"job {job_id!r} has finished and cannot be resumed")
    record = owned_job(store, job_id, owner)
    if outcome == "requeue":
        _dispatch(app, record)
    return record


def cancel_job(store: JobStore, app: Celery, job_id: str, owner: str | None,
               grace_s: float) -> JobRecord:
    """Ask a running job to stop at its next checkpoint; revoke it if it has not in ``grace_s``."""
    record = owned_job(store, job_id, owner)
    outcome = store.control(job_id, "cancel")
    if outcome == "finished":
        raise InvalidTransition(f"job {job_id!r} has finished and cannot be cancelled")
    if outcome == "requested":
        app.send_task(ENFORCE_CANCEL, args=(job_id, record.runs), countdown=grace_s)
    return owned_job(store, job_id, owner)


def enforce_cancel(store: JobStore, app: Celery, job_id: str, grace_s: float,
                   runs: int | None = None) -> bool:
    """Revoke (SIGKILL) a run that did not honour a cancel in time; returns True if it did."""
    record = store.get(job_id)
    if record is None or record.status != JobStatus.RUNNING or record.control != "cancel":
        return False
    if runs is not None and record.runs != runs:
        return False
    if time.time() - record.cancel_at < grace_s * 0.9:
        return False
    if record.task_id:
        app.control.revoke(record.task_id, terminate=True, signal="SIGKILL")
    return store.force_cancel(job_id)


def holder_node(holder: str) -> tuple[str, str]:
    """``node|boot|task`` -> (node, boot)."""
    node, _, rest = holder.partition("|")
    return node, rest.partition("|")[0]


def recover_jobs(store: JobStore, app: Celery, *, lease_s: float, node: str | None = None,
                 boot: str | None = None, grace_s: float = 30.0) -> list[str]:
    """Re-queue running jobs whose worker is gone; revoke overdue cancels. Returns re-queued ids.

    A run is gone when its heartbeat is older than ``lease_s``, or at once when ``node``
    restarted (same node name, another boot id): ``kill -9`` leaves no one to say so.
    """
    requeued: list[str] = []
    now = time.time()
    for record in store.find(limit=10_000):
        if record.status != JobStatus.RUNNING:
            continue
        if record.control == "cancel":
            enforce_cancel(store, app, record.id, grace_s)
            continue
        held_node, held_boot = holder_node(record.holder)
        restarted = node is not None and held_node == node and held_boot != boot
        if (restarted or now - record.beat_at > lease_s) and store.reclaim(record.id,
                                                                          record.holder):
            _dispatch(app, record)
            requeued.append(record.id)
    return requeued


def clean_finished_jobs(store: JobStore, ttl_s: float) -> list[str]:
    """Delete finished jobs (record, checkpoint, processed ids) older than ``ttl_s``."""
    cutoff = time.time() - ttl_s
    gone = [r.id for r in store.find(limit=100_000)
            if r.status.finished and r.finished_at is not None and r.finished_at < cutoff]
    for job_id in gone:
        store.delete(job_id)
    return gone
