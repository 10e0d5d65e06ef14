"""How task metrics are laid out in Redis: outcomes, duration buckets, hash fields, rate window.

Workers write these fields (``metrics.recorder``) and every reader decodes them
(``metrics.readings``), so their one definition is here. A field is a JSON array of its label
values, so no task or queue name can collide with a separator.
"""

from __future__ import annotations

import json
import math
from enum import StrEnum

from prometheus_client.utils import floatToGoString


class Outcome(StrEnum):
    #: The task returned.
    SUCCEEDED = "succeeded"
    #: The task raised (workload tasks; an ordered task never raises out, it is parked).
    FAILED = "failed"
    #: One failed attempt of an ordered task that is tried again in place (counted per attempt).
    RETRIED_IN_PLACE = "retried_in_place"
    #: Parked in the dead-letter store: an ordered task out of attempts, or a poison message.
    DEAD_LETTERED = "dead_lettered"
    #: Requeued through the broker by ``Task.retry()`` (never an ordered task).
    RETRIED = "retried"
    #: Ended by Celery's ``Ignore`` or ``Reject``.
    IGNORED = "ignored"


#: Upper bounds (seconds) of the task duration histogram: chat replies to long jobs.
DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                                       5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, math.inf)
#: Histogram fields that are not buckets.
SUM, COUNT = "sum", "count"

#: The recent rate is tasks finished over this many seconds, per queue.
RATE_WINDOW_S = 60
#: Per-second completion counters live this long (twice the window: a late reader still sees it).
COMPLETIONS_TTL_S = 2 * RATE_WINDOW_S

#: Label of a poison message whose task name is not a registered task (bounded cardinality).
UNKNOWN = "unknown"


def field(*labels: str) -> str:
    """The hash field of one series: its label values as a compact JSON array."""
    return json.dumps(list(labels), separators=(",", ":"))


def labels_of(raw: str) -> list[str]:
    """The label values of a hash field written by :func:`field`."""
    value = json.loads(raw)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"not a metrics field: {raw!r}")
    return value


def bucket_label(bound: float) -> str:
    """Prometheus' spelling of a bucket bound (``0.005``, ``1.0``, ``+Inf``)."""
    return str(floatToGoString(bound))


def bucket_of(seconds: float) -> str:
    """The label of the smallest bucket that holds a duration of ``seconds``."""
    for bound in DURATION_BUCKETS:
        if seconds <= bound:
            return bucket_label(bound)
    return bucket_label(math.inf)
