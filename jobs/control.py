"""The producer side of jobs: create, pause, resume, cancel, recover lost work, clean up.

Used by the API, the CLI and the beat maintenance task. Sends by task name through a Celery
client app, so it never imports worker code.

Work is lost two ways, and the maintenance pass recovers both: a run whose worker died
(``recover_jobs``: its heartbeat stops) and a queued job's message the broker dropped before
any run took it (``redispatch_lost_jobs``: no queue holds it and no worker reserved it). Every
send is recorded on the job first (``dispatch_id``, ``dispatched_at``), which is what the
second check compares against. A job sent twice still runs once: a run starts only by
acquiring a *queued* job with no holder (``JobStore.acquire``), so the later message finds
it running or finished and does nothing.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from celery import Celery

from jobs.broker import held_task_ids
from jobs.errors import InvalidTransition, InvalidWork, NotOwner, WorkNotFound
from jobs.kinds import kind_named, queue_of
from jobs.records import JobRecord, JobStatus
from jobs.store import JobStore
from routing.queues import ENFORCE_CANCEL

log = logging.getLogger(__name__)


def _dispatch(store: JobStore, app: Celery, record: JobRecord, replaces: str = "") -> str:
    """Send the job's task under a new id recorded first; '' if it must not be sent.

    Not sent when the job stopped being queued meanwhile (a pause or cancel won the race; a
    resume sends it again) or when ``replaces`` was already re-sent by another pass.
    """
    task_id = str(uuid.uuid4())  # Celery's own form of a task id
    if not store.note_dispatch(record.id, task_id, replaces=replaces):
        return ""
    app.send_task(kind_named(record.kind).task_name, args=(record.id,),
                  priority=record.priority, task_id=task_id)
    return task_id


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
    _dispatch(store, app, record)
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
        _dispatch(store, app, record)
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
            _dispatch(store, app, record)
            requeued.append(record.id)
    return requeued


def job_queue(record: JobRecord) -> str:
    """The workload queue the job's messages wait in."""
    return queue_of(kind_named(record.kind))


def redispatch_lost_jobs(store: JobStore, app: Celery, *, grace_s: float) -> list[str]:
    """Send again each queued job whose message is lost; returns the re-sent job ids.

    Lost: dispatched more than ``grace_s`` ago and its task id is in no priority sub-list of
    its queue and not in kombu's ``unacked`` record. That happens when a worker is killed
    between kombu's BRPOP and its ``unacked`` write, or when Redis loses the write (AOF
    everysec); the job would otherwise stay queued forever. Paused and finished jobs are
    never sent (``JobStore.note_dispatch`` refuses them).
    """
    cutoff = time.time() - grace_s
    due = [r for r in store.find(limit=10_000)
           if r.status == JobStatus.QUEUED and r.dispatched_at <= cutoff]
    if not due:
        return []
    held = held_task_ids(store.redis, {job_queue(r) for r in due})
    return [r.id for r in due if r.dispatch_id not in held and _redispatch(store, app, r)]


def _redispatch(store: JobStore, app: Celery, record: JobRecord) -> bool:
    task_id = _dispatch(store, app, record, replaces=record.dispatch_id)
    if task_id:
        log.warning("job %s: message %s (sent %.0f s ago) is in neither queue %s nor unacked; "
                    "re-dispatched as %s", record.id, record.dispatch_id or "?",
                    time.time() - record.dispatched_at, job_queue(record), task_id)
    return bool(task_id)


def clean_finished_jobs(store: JobStore, ttl_s: float) -> list[str]:
    """Delete finished jobs (record, checkpoint, processed ids) older than ``ttl_s``."""
    cutoff = time.time() - ttl_s
    gone = [r.id for r in store.find(limit=100_000)
            if r.status.finished and r.finished_at is not None and r.finished_at < cutoff]
    for job_id in gone:
        store.delete(job_id)
    return gone
