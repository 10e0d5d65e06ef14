"""The job tasks: one per job kind (routed by name to its workload queue) and the cancel guard.

The plug-in kinds of ``JOB_KINDS`` are loaded (and checked) when a worker imports this module,
so a bad entry stops the worker at start with an error naming it.

Progress lives in the job's Redis record (``jobs.store``), readable without a result backend;
``update_state`` is called as well when a result backend is configured.
"""

from __future__ import annotations

from celery import Task

import celeryconfig
from jobs.control import enforce_cancel
from jobs.kinds import BUILT_IN_KINDS, job_kinds
from jobs.runner import run_job
from routing.queues import ENFORCE_CANCEL
from services.registry import services
from tasks.app import app
from tasks.maintenance import job_store, lease_holder
from tasks.workload import WorkloadTask


def _run(task: Task, job_id: str) -> str:
    def ask(owner: str, prompt: str) -> str:
        return str(services().get("ai").reply(owner, prompt, []))

    def report(current: int, total: int, message: str) -> None:
        if task.app.conf.result_backend:
            task.update_state(state="PROGRESS",
                              meta={"current": current, "total": total, "message": message})

    return run_job(job_store(), job_id, holder=lease_holder(task.request.hostname,
                                                            task.request.id),
                   task_id=str(task.request.id), ask=ask,
                   checkpoint_every=celeryconfig.settings.job_checkpoint_every,
                   on_progress=report)


#: A run past ``JOB_SOFT_TIME_LIMIT_S`` gets ``SoftTimeLimitExceeded`` and stops paused at its
#: last checkpoint (``jobs.runner``). Only job tasks carry it: an ordered task never does.
SOFT_LIMIT_S = celeryconfig.settings.job_soft_time_limit_s


@app.task(name=BUILT_IN_KINDS["profiling"].task_name, base=WorkloadTask, bind=True,
          soft_time_limit=SOFT_LIMIT_S)
def profiling_job(self: Task, job_id: str) -> str:
    """Profile generated rows: per-column statistics, checkpointed every K rows."""
    return _run(self, job_id)


@app.task(name=BUILT_IN_KINDS["llm"].task_name, base=WorkloadTask, bind=True,
          soft_time_limit=SOFT_LIMIT_S)
def llm_batch_job(self: Task, job_id: str) -> str:
    """Ask the AI handler about each prompt of the batch, checkpointed every K prompts."""
    return _run(self, job_id)


def _plug_in_job(self: Task, job_id: str) -> str:
    """Run a job of a plug-in kind (``JOB_KINDS``), checkpointed every K items."""
    return _run(self, job_id)


for _kind in job_kinds().values():
    if _kind.name not in BUILT_IN_KINDS:
        app.task(name=_kind.task_name, base=WorkloadTask, bind=True,
                 soft_time_limit=SOFT_LIMIT_S)(_plug_in_job)


@app.task(name=ENFORCE_CANCEL)
def enforce_cancel_task(job_id: str, runs: int | None = None) -> bool:
    """Revoke a run that ignored its cancel request for ``JOB_CANCEL_GRACE_S``."""
    return enforce_cancel(job_store(), app, job_id, celeryconfig.settings.job_cancel_grace_s,
                          runs)
