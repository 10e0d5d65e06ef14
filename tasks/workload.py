"""The base of workload tasks (profiling, llm, promises), and the workload worker's limits.

Workload tasks have no per-user order, so Celery's own retry (a new message with a
countdown) is fine here, unlike ``tasks.ordered``. This base must never be used for a task
in ``routing.queues.ORDERED_TASKS``.

The per-child limits (``WORKLOAD_MAX_TASKS_PER_CHILD``, ``WORKLOAD_MAX_MEMORY_PER_CHILD_KB``)
are set only on a worker that consumes workload queues and no shard queue, however it was
started; shard and maintenance workers keep Celery's defaults.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.signals import celeryd_init

import celeryconfig
from routing.queues import WORKLOAD_QUEUES, is_workload_worker
from services.ai.base import HandlerUnavailable


@celeryd_init.connect
def limit_workload_worker(conf: Any = None, options: dict[str, Any] | None = None,
                          **_: Any) -> None:
    """Set the per-child limits before the pool is built, on workload workers only."""
    queues = (options or {}).get("queues") or WORKLOAD_QUEUES  # no -Q: every task queue
    if isinstance(queues, str):
        queues = queues.split(",")
    if conf is None or not is_workload_worker(queues):
        return
    settings = celeryconfig.settings
    conf.worker_max_tasks_per_child = settings.workload_max_tasks_per_child
    conf.worker_max_memory_per_child = settings.workload_max_memory_per_child_kb


class WorkloadTask(Task):
    #: Transient failures worth another try; anything else fails the task at once.
    autoretry_for = (HandlerUnavailable, ConnectionError, TimeoutError)
    #: Exponential backoff: 1 s, 2 s, 4 s, ... capped at ``retry_backoff_max``.
    retry_backoff = True
    retry_backoff_max = 300
    #: Full jitter on each countdown, so failed jobs do not retry in lockstep.
    retry_jitter = True
    max_retries = 5
    acks_late = True
