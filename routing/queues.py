"""Queue names and task names: which task goes to which queue. The one home of these facts.

Ordered tasks (one user's conversation) go to the user's shard queue ``shard.<n>``; each shard
queue has exactly one consumer, a solo worker with prefetch 1, so a user's ordered tasks run
one at a time in arrival order. Workload tasks go to their own priority queues and never
touch a shard.
"""

from __future__ import annotations

from collections.abc import Iterable

SHARD_QUEUE_PREFIX = "shard."

#: Catch-all queue for tasks without a route of their own.
DEFAULT_QUEUE = "default"
#: The queue shard hosts listen on as Celery workers (remote control, lifecycle). Nothing is
#: ever published there: a host takes its shards' messages itself (``shardhost.host``).
SHARD_HOST_QUEUE = "shard-hosts"
#: The control plane's passes (lost-work recovery, cleanup, overdue cancels): consumed by a
#: worker of its own that runs no user work, so a pass never waits behind a long job.
MAINTENANCE_QUEUE = "maintenance"
#: Data-profiling jobs.
PROFILING_QUEUE = "profiling"
#: LLM batch jobs.
LLM_QUEUE = "llm"
#: Promise execution (background work with dependencies).
PROMISES_QUEUE = "promises"

#: Queues served by the workload workers (normal concurrency, kombu priority emulation).
WORKLOAD_QUEUES: tuple[str, ...] = (PROFILING_QUEUE, LLM_QUEUE, PROMISES_QUEUE, DEFAULT_QUEUE)

# Task names: fixed strings, so producers can send by name without importing worker code.
SEND_AI_RESPONSE = "shardline.send_ai_response"
SEND_PROACTIVE_MESSAGE = "shardline.send_proactive_message"
NOTIFY_PROMISE_DONE = "shardline.notify_promise_done"
#: Beat's maintenance pass, and the restart pass a workload worker sends naming itself.
MAINTENANCE = "shardline.maintenance"
#: Revokes a running job that ignored its cancel request for ``JOB_CANCEL_GRACE_S``.
ENFORCE_CANCEL = "shardline.jobs.enforce_cancel"
#: Tasks of the control plane, routed to :data:`MAINTENANCE_QUEUE`.
MAINTENANCE_TASKS: frozenset[str] = frozenset({MAINTENANCE, ENFORCE_CANCEL})
#: Runs a released user's held messages on their shard (sent when a parked one is discarded).
RELEASE_HELD = "shardline.release_held"

#: The drain-barrier marker of a rescale, ``epoch_barrier(epoch, shard)``: put on every old
#: shard queue by ``shardline rescale`` in the same Lua call as the epoch switch. Not a user's
#: task (no user id, not in :data:`ORDERED_TASKS`); it only ever arrives by that LPUSH.
EPOCH_BARRIER = "shardline.epoch_barrier"

#: Tasks that belong to one user's conversation: routed to the user's shard, never retried
#: through the broker, never given a priority or an ETA.
ORDERED_TASKS: frozenset[str] = frozenset(
    {SEND_AI_RESPONSE, SEND_PROACTIVE_MESSAGE, NOTIFY_PROMISE_DONE, RELEASE_HELD}
)

#: Workload task-name prefixes and their queues; first match wins.
WORKLOAD_ROUTES: tuple[tuple[str, str], ...] = (
    ("shardline.jobs.profiling.", PROFILING_QUEUE),
    ("shardline.jobs.llm.", LLM_QUEUE),
    ("shardline.promises.", PROMISES_QUEUE),
)


def shard_queue(shard: int) -> str:
    """Name of the queue that shard ``shard`` consumes."""
    return f"{SHARD_QUEUE_PREFIX}{shard}"


def shard_of_queue(queue: str) -> int | None:
    """The shard number of a shard queue name, or ``None`` for any other queue."""
    if not queue.startswith(SHARD_QUEUE_PREFIX):
        return None
    tail = queue[len(SHARD_QUEUE_PREFIX) :]
    return int(tail) if tail.isdigit() else None


def is_workload_worker(queues: Iterable[str]) -> bool:
    """Whether a worker consuming ``queues`` is a workload worker: it consumes a workload
    queue and no shard queue (it holds jobs and promises; it never runs ordered tasks)."""
    names = set(queues)
    return bool(names & set(WORKLOAD_QUEUES)) and not any(
        shard_of_queue(name) is not None for name in names)


def workload_queue_for(task_name: str) -> str | None:
    """The workload queue of ``task_name``, or ``None`` if it has no workload route."""
    for prefix, queue in WORKLOAD_ROUTES:
        if task_name.startswith(prefix):
            return queue
    return None
