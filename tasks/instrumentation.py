"""The worker's task metrics: Celery's task signals feed this process's ``TaskRecorder``.

``task_prerun`` and ``task_postrun`` fire in the process that runs the task (the solo worker
itself, or a prefork child), where the service registry's Redis client lives. The ordered
base (``tasks.ordered``) and the message gate (``tasks.consumer``) report in-place retries
and dead letters through :func:`task_metrics`. Imported by ``tasks.app``; it never decides
anything about a task, it only counts.
"""

from __future__ import annotations

import threading
from typing import Any

from celery.signals import task_postrun, task_prerun

from metrics.recorder import TaskRecorder
from services.registry import services

_recorder: TaskRecorder | None = None
#: A shard host's threads start their first tasks at once: they must all get one recorder (a
#: run started on a recorder another thread then replaced would lose its figures).
_recorder_lock = threading.Lock()


def task_metrics() -> TaskRecorder | None:
    """This process's recorder, or None where no service registry runs (e.g. eager calls)."""
    global _recorder
    try:
        client = services().get("redis")
    except RuntimeError:
        return None
    recorder = _recorder
    if recorder is None or recorder.redis is not client:  # a new process or registry
        with _recorder_lock:
            if _recorder is None or _recorder.redis is not client:
                _recorder = TaskRecorder(client)
            recorder = _recorder
    return recorder


@task_prerun.connect
def _task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    recorder = task_metrics()
    if recorder is not None and task_id:
        delivery = getattr(task.request, "delivery_info", None) or {}
        recorder.started(task_id, delivery.get("routing_key"))


@task_postrun.connect
def _task_finished(task_id: str | None = None, task: Any = None, state: str | None = None,
                   **_: Any) -> None:
    recorder = task_metrics()
    if recorder is not None and task_id:
        recorder.finished(task_id, task.name, state)
