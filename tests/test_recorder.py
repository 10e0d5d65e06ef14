"""When a worker process writes its task figures (``metrics.recorder.TaskRecorder``).

A process with no other task running writes at once (a solo worker: after every task); a busy
one (a shard host) writes the figures of its finished tasks within ``FLUSH_EVERY_S`` even if
nothing else finishes meanwhile, and nothing is counted twice or lost. Real Redis.
"""

from __future__ import annotations

from metrics.recorder import FLUSH_EVERY_S, TaskRecorder
from metrics.schema import COUNT, Outcome, field
from routing import keys
from tests.harness import wait_until

TASK = "shardline.send_ai_response"
QUEUE = "shard.0"


def _succeeded(rclient) -> int:  # type: ignore[no-untyped-def]
    return int(rclient.hget(keys.TASK_OUTCOMES, field(TASK, QUEUE, Outcome.SUCCEEDED)) or 0)


def test_a_process_with_nothing_else_running_writes_at_once(rclient):
    """Breaks if an idle process keeps a finished task's figures back."""
    recorder = TaskRecorder(rclient)
    recorder.started("t1", QUEUE)
    recorder.finished("t1", TASK, "SUCCESS")
    assert _succeeded(rclient) == 1
    assert int(rclient.hget(keys.TASK_DURATIONS, field(TASK, QUEUE, COUNT)) or 0) == 1


def test_a_busy_process_writes_within_the_flush_interval_without_another_finish(rclient):
    """Breaks if figures held back while other tasks run wait for a later finish (a task that
    runs for minutes would hide them that long), or if holding them back counts any twice."""
    recorder = TaskRecorder(rclient)
    recorder.started("long", QUEUE)
    for n in range(5):
        recorder.started(f"t{n}", QUEUE)
        recorder.finished(f"t{n}", TASK, "SUCCESS")
    assert _succeeded(rclient) < 5  # held back: "long" still runs
    wait_until(lambda: _succeeded(rclient) == 5, 30 * FLUSH_EVERY_S,
               what="the held-back figures written while 'long' still runs")
    recorder.finished("long", TASK, "SUCCESS")
    assert _succeeded(rclient) == 6
