"""Worker side of the metrics: what one process records into Redis about the tasks it runs.

One :class:`TaskRecorder` per worker process (``tasks.instrumentation`` builds it on the
registry's Redis client). A finished task adds its outcome counter, its duration bucket, sum
and count, and its queue's per-second completion counter to what the process has not written
yet; the sums go out in one pipeline as soon as no other task of the process is running (a
solo worker: after every task), and at least every :data:`FLUSH_EVERY_S` while tasks keep
running (a busy shard host, where one pipeline per task was a sixth of its CPU). Recording must
never fail a task: a Redis error is logged and the figures are lost, never the task.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import redis

from metrics.schema import COMPLETIONS_TTL_S, COUNT, SUM, UNKNOWN, Outcome, bucket_of
from metrics.schema import field as label
from routing import keys

log = logging.getLogger(__name__)

#: Celery's final task states -> the outcome they count as.
_OUTCOME_OF_STATE = {"SUCCESS": Outcome.SUCCEEDED, "FAILURE": Outcome.FAILED,
                     "RETRY": Outcome.RETRIED, "IGNORED": Outcome.IGNORED,
                     "REJECTED": Outcome.IGNORED}

#: Longest a finished task's figures wait in the process while other tasks keep running.
FLUSH_EVERY_S = 1.0


@dataclass
class _Unwritten:
    """Figures of finished tasks not written to Redis yet: increments per hash field."""

    outcomes: Counter[str] = field(default_factory=Counter)
    durations: Counter[str] = field(default_factory=Counter)
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    #: (queue, unix second) -> tasks of that queue finished in that second.
    completions: Counter[tuple[str, int]] = field(default_factory=Counter)

    def write(self, pipe: redis.client.Pipeline) -> None:
        for name, count in self.outcomes.items():
            pipe.hincrby(keys.TASK_OUTCOMES, name, count)
        for name, count in self.durations.items():
            pipe.hincrby(keys.TASK_DURATIONS, name, count)
        for name, seconds in self.seconds.items():
            pipe.hincrbyfloat(keys.TASK_DURATIONS, name, seconds)
        for (queue, second), count in self.completions.items():
            pipe.incrby(keys.completions(queue, second), count)
            pipe.expire(keys.completions(queue, second), COMPLETIONS_TTL_S)

    def __bool__(self) -> bool:
        return bool(self.outcomes or self.durations or self.completions)


class TaskRecorder:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        #: task id -> (queue, monotonic start) of the runs in progress in this process.
        self._running: dict[str, tuple[str, float]] = {}
        #: Ids of tasks this process dead-lettered (already counted): no outcome at the end.
        self._parked: set[str] = set()
        #: A shard host's threads finish tasks at once: the figures not written yet are
        #: swapped out under this lock, and written outside it.
        self._lock = threading.Lock()
        self._unwritten = _Unwritten()
        self._write_by = time.monotonic() + FLUSH_EVERY_S
        self._flusher: threading.Thread | None = None

    def started(self, task_id: str, queue: str | None) -> None:
        """A task run begins (``task_prerun``)."""
        if not self._running:
            self._parked.clear()  # ids of held messages run inside an earlier task
        self._running[task_id] = (queue or UNKNOWN, time.monotonic())

    def finished(self, task_id: str, task: str, state: str | None) -> None:
        """A task run ended in Celery state ``state`` (``task_postrun``)."""
        queue, started = self._running.pop(task_id, (UNKNOWN, None))
        seconds = None if started is None else time.monotonic() - started
        outcome = None if task_id in self._parked else _OUTCOME_OF_STATE.get(state or "")
        self._parked.discard(task_id)
        with self._lock:
            figures = self._unwritten
            if outcome is not None:
                figures.outcomes[label(task, queue, outcome)] += 1
            if seconds is not None:
                figures.durations[label(task, queue, bucket_of(seconds))] += 1
                figures.seconds[label(task, queue, SUM)] += seconds
                figures.durations[label(task, queue, COUNT)] += 1
            figures.completions[(queue, int(time.time()))] += 1
            due = not self._running or time.monotonic() >= self._write_by
        if due:
            self.flush()
        elif self._flusher is None:
            self._start_flusher()

    def flush(self) -> None:
        """Write the figures of the tasks finished so far: one pipeline."""
        with self._lock:
            figures, self._unwritten = self._unwritten, _Unwritten()
            self._write_by = time.monotonic() + FLUSH_EVERY_S
        if not figures:
            return
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                figures.write(pipe)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not record the metrics of %d task(s): %s",
                        sum(figures.completions.values()), exc)

    def _start_flusher(self) -> None:
        """Write what waits at least every FLUSH_EVERY_S, even if no task finishes meanwhile."""
        with self._lock:
            if self._flusher is not None:
                return
            self._flusher = threading.Thread(target=self._flush_every, daemon=True,
                                             name="metrics-flusher")
        self._flusher.start()

    def _flush_every(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY_S)
            self.flush()

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
            self.redis.hincrby(keys.TASK_OUTCOMES, label(task, queue or UNKNOWN, outcome), 1)
        except redis.RedisError as exc:
            log.warning("could not count %s of %s: %s", outcome, task, exc)
