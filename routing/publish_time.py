"""Every task message carries ``published_at``: the producer's clock when it was published.

Ordered messages (``routing.send``, an ordered task's ``apply_async``) and shardline's
control messages get it from ``routing.envelope``. Everything sent through Celery's
``send_task`` (workload tasks and their replays, beat, ``send_task`` of an ordered task by
name) gets it here, from a
``before_task_publish`` handler that sets it only when absent. ``routing/__init__`` imports
this module, so every producer and every worker (both import ``routing``) has it connected.
The age of the oldest waiting message (``metrics.readings``) is read from this header.
"""

from __future__ import annotations

import time
from typing import Any

from celery.signals import before_task_publish

from routing.envelope import PUBLISHED_AT_HEADER


@before_task_publish.connect(weak=False)
def stamp_published_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Set ``headers["published_at"]`` (unix seconds) unless the sender set it."""
    if headers is not None and headers.get(PUBLISHED_AT_HEADER) is None:
        headers[PUBLISHED_AT_HEADER] = time.time()
