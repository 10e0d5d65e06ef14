"""Beat's maintenance pass and the restart pass: recover lost jobs and promises, clean up.

``shardline.maintenance`` runs on the ``maintenance`` queue (a worker of its own, never busy
with user work) every ``MAINTENANCE_INTERVAL_S`` (beat)
and once when a workload worker starts, naming that worker, so runs it held before a
``kill -9`` are re-queued at once instead of after ``WORK_LEASE_S``. Each pass also re-sends
a queued job whose message the broker lost before any run took it, once that message was
sent more than ``WORK_LEASE_S`` ago (the same patience as for a silent run).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery.signals import worker_ready

import celeryconfig
from jobs.control import clean_finished_jobs, recover_jobs, redispatch_lost_jobs
from jobs.store import JobStore
from routing.queues import MAINTENANCE, is_workload_worker
from services.registry import services
from tasks.app import app

log = logging.getLogger(__name__)

#: This worker's boot: imported before the pool forks, so every child shares it.
BOOT_ID = uuid.uuid4().hex


def job_store() -> JobStore:
    return JobStore(services().get("redis"), ttl_s=celeryconfig.settings.job_ttl_s)


def lease_holder(hostname: str | None, task_id: str | None) -> str:
    """Who holds a job or promise run: ``node|boot|task``."""
    return f"{hostname or '?'}|{BOOT_ID}|{task_id or '?'}"


@app.task(name=MAINTENANCE)
def maintenance(node: str | None = None, boot: str | None = None) -> dict[str, Any]:
    """Re-queue lost job runs, lost job messages and promises; revoke overdue cancels; drop
    expired jobs."""
    from promises.recovery import recover_promises
    from promises.runtime import promise_service

    s = celeryconfig.settings
    store = job_store()
    requeued = recover_jobs(store, app, lease_s=s.work_lease_s, node=node, boot=boot,
                            grace_s=s.job_cancel_grace_s)
    redispatched = redispatch_lost_jobs(store, app, grace_s=s.work_lease_s)
    cleaned = clean_finished_jobs(store, s.job_ttl_s)
    promised = recover_promises(promise_service(app), lease_s=s.work_lease_s, node=node,
                                boot=boot)
    if requeued or redispatched or cleaned or promised:
        log.info("maintenance: jobs re-queued %s, re-dispatched %s, cleaned %s; "
                 "promises re-dispatched %s", requeued, redispatched, cleaned, promised)
    return {"jobs_requeued": requeued, "jobs_redispatched": redispatched,
            "jobs_cleaned": cleaned, "promises": promised}


@worker_ready.connect
def _recover_after_restart(sender: Any = None, **_: Any) -> None:
    queues = getattr(sender.app.amqp.queues, "consume_from", None) or sender.app.amqp.queues
    if not is_workload_worker(queues):
        return  # shard and maintenance workers never hold jobs or promises
    sender.app.send_task(MAINTENANCE, kwargs={"node": sender.hostname, "boot": BOOT_ID})
