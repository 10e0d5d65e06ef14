"""Running one job in a worker: resume from the checkpoint, process items, obey pause/cancel.

Control requests are cooperative and seen only at checkpoints (every ``checkpoint_every``
items), so a pause always stops right after a committed item and ``resume`` continues with the
next one. Items processed after the last checkpoint by a run that dies are processed again by
the next run (their ids are committed only with a checkpoint, so the processed list and the
result never count them twice).

A run past Celery's soft time limit (``JOB_SOFT_TIME_LIMIT_S``) stops paused at its last
checkpoint, its message saying so; ``resume`` continues from there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery.exceptions import SoftTimeLimitExceeded

from jobs.kinds import AskAI, kind_named
from jobs.records import JobStatus
from jobs.store import JobStore

log = logging.getLogger(__name__)

#: ``(current, total, message)``: extra progress reporting (Celery ``update_state``).
ProgressHook = Callable[[int, int, str], None]


def run_job(store: JobStore, job_id: str, *, holder: str, task_id: str, ask: AskAI,
            checkpoint_every: int, on_progress: ProgressHook | None = None) -> str:
    """Run ``job_id`` under lease ``holder``; returns the status it left the job in."""
    if not store.acquire(job_id, holder, task_id):
        record = store.get(job_id)
        log.info("job %s not runnable here (%s)", job_id, record.status if record else "gone")
        return "not-runnable"
    record = store.get(job_id)
    assert record is not None
    kind = kind_named(record.kind)
    params, total = record.params, record.total
    saved = store.load_checkpoint(job_id)
    position = saved.position if saved else 0
    state = saved.state if saved else kind.initial_state(params)
    store.note_run_start(job_id, holder, position)
    uncommitted: list[str] = []
    try:
        while position < total:
            kind.process(params, position, state, ask, record.owner)
            uncommitted.append(kind.item_id(params, position))
            position += 1
            message = f"{kind.name}: {position}/{total}"
            if position % checkpoint_every and position < total:
                verdict = store.progress(job_id, holder, position, message)
            else:
                verdict = store.checkpoint(job_id, holder, position, state, uncommitted, message)
                uncommitted = []
                if verdict == "cancel":
                    store.settle(job_id, holder, JobStatus.CANCELLED, drop_checkpoint=True)
                    return JobStatus.CANCELLED.value
                if verdict == "pause" and position < total:
                    store.settle(job_id, holder, JobStatus.PAUSED)
                    return JobStatus.PAUSED.value
            if verdict == "lost":
                log.warning("job %s: lease lost at item %d, stopping this run", job_id, position)
                return "lost"
            if on_progress is not None:
                on_progress(position, total, message)
    except SoftTimeLimitExceeded:
        return _stop_at_soft_limit(store, job_id, holder, position)
    except Exception as exc:
        log.exception("job %s failed at item %d", job_id, position)
        store.settle(job_id, holder, JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        return JobStatus.FAILED.value
    store.settle(job_id, holder, JobStatus.COMPLETED, result=kind.result(params, state))
    return JobStatus.COMPLETED.value


def _stop_at_soft_limit(store: JobStore, job_id: str, holder: str, reached: int) -> str:
    """Pause the run at its last checkpoint. The limit strikes wherever the run is, maybe
    half-way through an item, so the in-memory state is not saved: the checkpoint is whole,
    and the items after it are processed again on resume (committed once)."""
    saved = store.load_checkpoint(job_id)
    resume_at = saved.position if saved else 0
    message = (f"paused by the soft time limit (JOB_SOFT_TIME_LIMIT_S) after {reached} items; "
               f"resume continues from the checkpoint at item {resume_at}")
    log.warning("job %s: %s", job_id, message)
    if not store.settle(job_id, holder, JobStatus.PAUSED, message=message):
        return "lost"
    return JobStatus.PAUSED.value
