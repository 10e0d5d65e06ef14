"""The Celery router: ordered tasks to the user's shard, workload tasks to their queues.

Used in ``task_routes``; it is also the producer-side gate for ordered tasks. It raises before
anything is published when the user id cannot be routed or when the caller passes an option
that would reorder a shard: an explicit ``queue`` (it overrides the router, see
``celery/app/routes.py``) or a ``priority`` (each step is its own Redis list, read
priority-major).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from routing.errors import InvalidDispatch, InvalidUserId
from routing.hashing import shard_for
from routing.queues import ORDERED_TASKS, shard_queue, workload_queue_for


def user_id_of(args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None) -> object:
    """The ``user_id`` argument of an ordered task call (first positional or keyword)."""
    if kwargs and "user_id" in kwargs:
        return kwargs["user_id"]
    if args:
        return args[0]
    raise InvalidUserId("ordered task called without a user_id argument")


def _configured_shard_count() -> int:
    import celeryconfig

    return celeryconfig.settings.shard_count


def queue_for(user_id: object, shard_count: int | None = None) -> str:
    """The shard queue of ``user_id`` under the configured (or given) shard count."""
    count = _configured_shard_count() if shard_count is None else shard_count
    return shard_queue(shard_for(user_id, count))


def _explicit_queue_name(options: Mapping[str, Any]) -> str | None:
    queue = options.get("queue")
    if queue is None:
        return None
    return str(getattr(queue, "name", queue))


class ShardRouter:
    """A ``task_routes`` router. ``shard_count`` is a number or a callable returning one."""

    def __init__(self, shard_count: int | Callable[[], int] | None = None) -> None:
        self._shard_count = shard_count

    def shard_count(self) -> int:
        if self._shard_count is None:
            return _configured_shard_count()
        if callable(self._shard_count):
            return self._shard_count()
        return self._shard_count

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
            queue = queue_for(user_id_of(args, kwargs), self.shard_count())
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
            return {"queue": queue}
        workload = workload_queue_for(name)
        return {"queue": workload} if workload else None


#: The router instance named in ``celeryconfig.task_routes``.
route_task = ShardRouter()
