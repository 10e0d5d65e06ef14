"""The Celery router: ordered tasks to the user's shard, workload tasks to their queues, the
maintenance tasks to the maintenance queue.

Used in ``task_routes``; it is also the producer-side gate for ordered tasks. It raises before
anything is published when the user id cannot be routed or when the caller passes an option
that would reorder a shard: an explicit ``queue`` (it overrides the router, see
``celery/app/routes.py``) or a ``priority`` (each step is its own Redis list, read
priority-major).

The shard count is the deployment's shard map (``routing.shardmap``), cached per process for
``SHARD_MAP_REFRESH_S``; each ordered message sent through Celery's ``send_task`` gets the
epoch it was routed under in its ``shardline_epoch`` header. Unlike ``routing.dispatch``
(messages and shardline's own control messages), such a publish is not fenced: for up to
``SHARD_MAP_REFRESH_S`` after a rescale a process may still send it under the old map.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celery.signals import before_task_publish

from routing.envelope import EPOCH_HEADER, USER_HEADER
from routing.errors import InvalidDispatch, InvalidUserId
from routing.hashing import shard_for
from routing.queues import (
    MAINTENANCE_QUEUE,
    MAINTENANCE_TASKS,
    ORDERED_TASKS,
    shard_queue,
    workload_queue_for,
)
from routing.shardmap import ShardMap, cache_for
from routing.userid import canonical_user_id


def user_id_of(args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None) -> object:
    """The ``user_id`` argument of an ordered task call (first positional or keyword)."""
    if kwargs and "user_id" in kwargs:
        return kwargs["user_id"]
    if args:
        return args[0]
    raise InvalidUserId("ordered task called without a user_id argument")


def configured_shard_map() -> ShardMap:
    """The deployment's shard map as this process sees it (cached, ``SHARD_MAP_REFRESH_S``).

    Without a Redis URL (``REDIS_URL`` or a running launcher's) it is ``SHARD_COUNT`` at
    epoch 0.
    """
    import celeryconfig

    settings = celeryconfig.settings
    if not settings.redis_url:
        return ShardMap(settings.shard_count, 0)
    return cache_for(settings.redis_url).current()


def queue_for(user_id: object, shard_count: int | None = None) -> str:
    """The shard queue of ``user_id`` under the deployment's (or the given) shard count."""
    count = configured_shard_map().count if shard_count is None else shard_count
    return shard_queue(shard_for(user_id, count))


#: The map the router last routed an ordered task with, per thread: the publish signal below
#: stamps its epoch on that message (Celery calls the router, then the signal, in one thread).
_routed = threading.local()


@before_task_publish.connect(weak=False)
def stamp_epoch(headers: dict[str, Any] | None = None, body: Any = None, **_: Any) -> None:
    """Put the epoch the router used into an ordered message's ``shardline_epoch`` header, and
    its user into ``shardline_user`` (as ``routing.envelope`` does for routing's own publish)."""
    shard_map: ShardMap | None = getattr(_routed, "map", None)
    _routed.map = None
    if headers is None or headers.get("task") not in ORDERED_TASKS:
        return
    if shard_map is not None and shard_map.epoch is not None and EPOCH_HEADER not in headers:
        headers[EPOCH_HEADER] = shard_map.epoch
    if USER_HEADER not in headers and isinstance(body, (list, tuple)) and len(body) >= 2:
        try:
            headers[USER_HEADER] = canonical_user_id(user_id_of(body[0], body[1]))
        except (InvalidUserId, TypeError):
            pass  # the worker's gate dead-letters it; a host runs it alone meanwhile


def _explicit_queue_name(options: Mapping[str, Any]) -> str | None:
    queue = options.get("queue")
    if queue is None:
        return None
    return str(getattr(queue, "name", queue))


class ShardRouter:
    """A ``task_routes`` router. ``shard_count`` is a number or a callable returning one; the
    default (``None``) is the deployment's shard map. A given count pins the router (tests,
    benchmarks): its messages carry no epoch and ``routing.dispatch`` does not fence them."""

    def __init__(self, shard_count: int | Callable[[], int] | None = None) -> None:
        self._shard_count = shard_count

    @property
    def pinned(self) -> bool:
        return self._shard_count is not None

    def shard_map(self) -> ShardMap:
        """The map this router routes with now."""
        if self._shard_count is None:
            return configured_shard_map()
        if callable(self._shard_count):
            return ShardMap(self._shard_count(), None)
        return ShardMap(self._shard_count, None)

    def shard_count(self) -> int:
        return self.shard_map().count

    def __call__(
        self,
        name: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any],
        task: Any = None,
        **kw: Any,
    ) -> dict[str, str] | None:
        if name in ORDERED_TASKS:
            shard_map = self.shard_map()
            queue = queue_for(user_id_of(args, kwargs), shard_map.count)
            explicit = _explicit_queue_name(options)
            if explicit is not None and explicit != queue:
                raise InvalidDispatch(
                    f"{name} must be routed by user id to {queue!r}, not sent to queue "
                    f"{explicit!r}: an explicit queue breaks per-user order"
                )
            if options.get("priority") is not None:
                raise InvalidDispatch(
                    f"{name} must not carry a priority (got {options['priority']!r}): "
                    "a second priority list would reorder the shard"
                )
            _routed.map = shard_map
            return {"queue": queue}
        if name in MAINTENANCE_TASKS:
            # Never behind user work: a pass on a workload queue waited for every long job
            # ahead of it (5 passes, 145 s behind one 33 s job).
            return {"queue": MAINTENANCE_QUEUE}
        workload = workload_queue_for(name)
        return {"queue": workload} if workload else None


#: The router instance named in ``celeryconfig.task_routes``.
route_task = ShardRouter()
