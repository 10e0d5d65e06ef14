"""Worker side of the metrics: what one process records into Redis about the tasks it runs.

One :class:`TaskRecorder` per worker process (``tasks.instrumentation`` builds it on the
registry's Redis client). A finished task costs one pipeline: its outcome counter, its
duration bucket, sum and count, and its queue's per-second completion counter. Recording must
never fail a task: a Redis error is logged and the figure is lost, never the task.
"""

from __future__ import annotations

import logging
import time

import redis

from metrics.schema import COMPLETIONS_TTL_S, COUNT, SUM, UNKNOWN, Outcome, bucket_of, field
from routing import keys

log = logging.getLogger(__name__)

#: Celery's final task states -> the outcome they count as.
_OUTCOME_OF_STATE = {"SUCCESS": Outcome.SUCCEEDED, "FAILURE": Outcome.FAILED,
                     "RETRY": Outcome.RETRIED, "IGNORED": Outcome.IGNORED,
                     "REJECTED": Outcome.IGNORED}


class TaskRecorder:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        #: task id -> (queue, monotonic start) of the runs in progress in this process.
        self._running: dict[str, tuple[str, float]] = {}
        #: Ids of tasks this process dead-lettered (already counted): no outcome at the end.
        self._parked: set[str] = set()

    def started(self, task_id: str, queue: str | None) -> None:
        """A task run begins (``task_prerun``)."""
        if not self._running:
            self._parked.clear()  # ids of held messages run inside an earlier task
        self._running[task_id] = (queue or UNKNOWN, time.monotonic())

    def finished(self, task_id: str, task: str, state: str | None) -> None:
        """A task run ended in Celery state ``state`` (``task_postrun``): one pipeline."""
        queue, started = self._running.pop(task_id, (UNKNOWN, None))
        seconds = None if started is None else time.monotonic() - started
        outcome = None if task_id in self._parked else _OUTCOME_OF_STATE.get(state or "")
        self._parked.discard(task_id)
        second = int(time.time())
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                if outcome is not None:
                    pipe.hincrby(keys.TASK_OUTCOMES, field(task, queue, outcome), 1)
                if seconds is not None:
                    pipe.hincrby(keys.TASK_DURATIONS, field(task, queue, bucket_of(seconds)), 1)
                    pipe.hincrbyfloat(keys.TASK_DURATIONS, field(task, queue, SUM), seconds)
                    pipe.hincrby(keys.TASK_DURATIONS, field(task, queue, COUNT), 1)
                pipe.incr(keys.completions(queue, second))
                pipe.expire(keys.completions(queue, second), COMPLETIONS_TTL_S)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not record the metrics of %s %s: %s", task, task_id, exc)

    def retried_in_place(self, task: str, queue: str | None) -> None:
        """One failed attempt of an ordered task that will be tried again in place."""
        self._count(task, queue, Outcome.RETRIED_IN_PLACE)

    def dead_lettered(self, task: str | None, queue: str | None, *,
                      task_id: str | None = None) -> None:
        """A message was parked in the dead-letter store; its run (if any) ends uncounted."""
        if task_id:
            self._parked.add(task_id)
        self._count(task or UNKNOWN, queue, Outcome.DEAD_LETTERED)

    def _count(self, task: str, queue: str | None, outcome: Outcome) -> None:
        try:
            self.redis.hincrby(keys.TASK_OUTCOMES, field(task, queue or UNKNOWN, outcome), 1)
        except redis.RedisError as exc:
            log.warning("could not count %s of %s: %s", outcome, task, exc)
