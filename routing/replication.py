"""``REDIS_WAIT_REPLICAS``: a write counts as done only once enough replicas hold it.

Redis replicates asynchronously: a write the master acknowledged may be missing on the replica
that a failover promotes. :func:`replicated` sends a write and ``WAIT n timeout`` on the same
connection, in one round trip (a pipeline), and raises :class:`NotReplicated` when fewer than
``n`` replicas acknowledged it in time, after asking the sentinels whether the master moved
(:func:`follow_master`). Producers use it for the publish script (a publish is
acknowledged only once replicated, and retried within PUBLISH_RETRY_S otherwise); workers use it
for the reply commit (``services.conversation``), so a done-marker that let a message be acked
cannot vanish in a failover. With ``n = 0`` callers send the write alone, as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline
from redis.sentinel import SentinelConnectionPool

#: Seconds a write keeps being sent until REDIS_WAIT_REPLICAS replicas hold it
#: (:func:`replicated_within_budget`): longer than Sentinel takes to demote an old master (it
#: waits about 8 s after the promotion) and to elect again.
REPLICATION_BUDGET_S = 60.0


class NotReplicated(redis.ConnectionError):
    """Fewer replicas than required acknowledged a write in time: a failover could lose it,
    so it does not count as done. A ``ConnectionError``: callers retry it as they retry a
    dropped connection (the write itself is idempotent where this is used)."""


def replicated(client: redis.Redis, write: Callable[[Pipeline], Any], replicas: int,
               timeout_ms: int) -> list[Any]:
    """Run ``write`` (it queues its commands on the pipeline it is given), then
    ``WAIT replicas timeout_ms`` on the same connection; the replies of the write's commands."""
    with client.pipeline(transaction=False) as pipe:
        write(pipe)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        *replies, acked = pipe.execute()
    if int(acked) < replicas:
        follow_master(client)
        raise NotReplicated(f"{acked} of the {replicas} replicas required (REDIS_WAIT_REPLICAS) "
                            f"acknowledged the write within {timeout_ms} ms")
    return replies


def replicated_within_budget(client: redis.Redis, write: Callable[[Pipeline], Any],
                             replicas: int, timeout_ms: int) -> list[Any]:
    """:func:`replicated`, sent again until enough replicas hold the write (``write`` must be
    idempotent). A failover is the usual cause: the old master keeps acknowledging until the
    sentinels demote it (and close its clients); the write then lands on the new master.
    Raises after :data:`REPLICATION_BUDGET_S`."""
    deadline = time.monotonic() + REPLICATION_BUDGET_S
    while True:
        try:
            return replicated(client, write, replicas, timeout_ms)
        except (redis.ConnectionError, redis.TimeoutError):  # NotReplicated included
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def follow_master(client: redis.Redis) -> None:
    """After a write that did not replicate: if the sentinels name another master now, drop
    this client's idle connections, so the retry goes there.

    A failover promotes the replica at once, but the sentinels demote the old master (and close
    its clients) only some seconds later; until then the old master acknowledges writes that
    no replica will ever hold. A client that does not WAIT cannot tell; one that does sees
    ``NotReplicated`` and asks (redis-py's own ``get_master_address`` drops the connections).
    """
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        pool.get_master_address()


def is_read_only(exc: BaseException) -> bool:
    """Whether ``exc`` is a write refused by a replica (``READONLY``): plain, or from inside a
    Lua script, which Redis reports as a script error and redis-py (even Sentinel's managed
    connection) does not turn into ``ReadOnlyError``."""
    return isinstance(exc, redis.ReadOnlyError) or (
        isinstance(exc, redis.ResponseError) and "READONLY" in str(exc))
