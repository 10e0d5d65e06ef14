"""Producer side of shardline: which shard owns a user, and how messages get there.

Import this package (never ``tasks``) from producers. Public API:

- :func:`shard_for` ``(user_id, shard_count) -> int``
- :func:`queue_for` ``(user_id) -> str`` under the configured ``SHARD_COUNT``
- :data:`route_task`, the router named in ``task_routes``
- :func:`send` and :func:`dispatch_batch` to publish :class:`ChatMessage` records
- :class:`InvalidUserId`, raised for ids that cannot be routed
"""

from routing import publish_time as _publish_time  # noqa: F401  (stamps published_at)
from routing.dispatch import ChatMessage, DispatchResult, dispatch_batch, producer_app, send
from routing.errors import (
    InvalidDispatch,
    InvalidUserId,
    PublishFailed,
    RedisAuthFailed,
    ShardlineError,
)
from routing.hashing import jump_hash, key_hash, shard_for
from routing.router import ShardRouter, queue_for, route_task
from routing.userid import canonical_user_id

__all__ = [
    "ChatMessage",
    "DispatchResult",
    "InvalidDispatch",
    "InvalidUserId",
    "PublishFailed",
    "RedisAuthFailed",
    "ShardRouter",
    "ShardlineError",
    "canonical_user_id",
    "dispatch_batch",
    "jump_hash",
    "key_hash",
    "producer_app",
    "queue_for",
    "route_task",
    "send",
    "shard_for",
]
