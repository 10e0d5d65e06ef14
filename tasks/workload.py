"""The base of workload tasks (profiling, llm, promises): retried through the broker.

Workload tasks have no per-user order, so Celery's own retry (a new message with a
countdown) is fine here, unlike ``tasks.ordered``. This base must never be used for a task
in ``routing.queues.ORDERED_TASKS``.
"""

from __future__ import annotations

from celery import Task

from services.ai.base import HandlerUnavailable


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
