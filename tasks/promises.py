"""The promise task: run one dispatched promise (``shardline.promises.run``, promises queue).

The plug-in kinds of ``PROMISE_KINDS`` are loaded (and checked) when a worker imports this
module, so a bad entry stops the worker at start with an error naming it.
"""

from __future__ import annotations

from celery import Task

import celeryconfig
from promises.kinds import promise_kinds
from promises.runtime import promise_service, run_promise
from promises.service import RUN_PROMISE
from services.registry import services
from tasks.app import app
from tasks.maintenance import lease_holder
from tasks.workload import WorkloadTask

promise_kinds()


@app.task(name=RUN_PROMISE, base=WorkloadTask, bind=True)
def run_promise_task(self: Task, promise_id: str, attempt: int) -> str:
    """Do the promise's work if ``attempt`` is still its current dispatch; record it once."""
    registry = services()

    def ask(owner: str, prompt: str) -> str:
        return str(registry.get("ai").reply(owner, prompt, []))

    return run_promise(promise_service(app), promise_id, attempt,
                       holder=lease_holder(self.request.hostname, self.request.id), ask=ask,
                       runlog=registry.get("redis"),
                       heartbeat_s=celeryconfig.settings.work_lease_s / 3)
