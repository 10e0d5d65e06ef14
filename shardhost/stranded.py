"""Crash recovery: put a shard's stranded messages back at the head of its queue, in order.

kombu's Redis transport keeps each delivered, not yet acked message in the global hash
``unacked`` (and ``unacked_index``) until it is acked. A worker killed mid-task leaves its
message there, and kombu returns it only after the visibility timeout, after the user's later
messages (docs/ordering.md). A shard worker also keeps each taken message in the shard's in-flight
list until the ack (``shardhost.transport``), which covers a crash between the take and kombu's
``unacked`` record. The shard's next lease owner calls :func:`restore_stranded` before it
consumes anything: it restores the in-flight list first, then any ``unacked`` entry of the queue
that was not in it. It must never run while another worker may still consume the shard: each
move checks, in the same Lua call, that the caller still owns the shard lease.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import redis

from routing import keys
from routing.replies import as_text

log = logging.getLogger(__name__)

# KEYS: unacked, unacked_index, queue, lease. ARGV: delivery tag, payload, lease token.
# 1 moved, 0 already gone (acked or restored by someone else), -1 lease not ours.
_MOVE = """
if redis.call('HGET', KEYS[4], 'owner') ~= ARGV[3] then return -1 end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
"""


# KEYS: inflight, unacked, unacked_index, queue, lease. ARGV: raw item, payload, tag, token.
_MOVE_INFLIGHT = """
if redis.call('HGET', KEYS[5], 'owner') ~= ARGV[4] then return -1 end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if ARGV[3] ~= '' then
  redis.call('HDEL', KEYS[2], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[3])
end
redis.call('RPUSH', KEYS[4], ARGV[2])
return 1
"""


class LeaseNotHeld(Exception):
    """Restoring stopped because the caller no longer owns the shard lease."""


@dataclass(frozen=True)
class Stranded:
    tag: str
    delivered_at: float
    task_id: str | None
    payload: str | bytes  # the message as it goes back on the queue, marked redelivered


def find_stranded(client: redis.Redis, queue: str) -> list[Stranded]:
    """Unacked messages routed to ``queue``, oldest delivery first."""
    index: Any = client.zrange(keys.KOMBU_UNACKED_INDEX, 0, -1, withscores=True)
    scores: dict[str, float] = {as_text(tag): float(score) for tag, score in index}
    found: list[Stranded] = []
    for tag, raw in client.hscan_iter(keys.KOMBU_UNACKED):
        try:
            message, exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue  # not a kombu record: leave it alone
        if queue not in (routing_key, exchange):
            continue
        _mark_redelivered(message)
        headers = message.get("headers") or {}
        found.append(Stranded(tag=as_text(tag), delivered_at=scores.get(as_text(tag), 0.0),
                              task_id=headers.get("id"), payload=json.dumps(message)))
    found.sort(key=lambda s: s.delivered_at)
    return found


def find_inflight(client: redis.Redis, queue: str) -> list[tuple[bytes, Stranded]]:
    """(raw item, message) of ``queue``'s in-flight list, oldest take first."""
    found: list[tuple[bytes, Stranded]] = []
    # Raw bytes even on a decoding client: a poison item need not be UTF-8.
    items = client.execute_command("LRANGE", keys.inflight(queue), 0, -1, NEVER_DECODE=True)
    for raw in reversed(items):
        try:
            message = json.loads(raw)
            tag = str(message["properties"]["delivery_tag"])
            _mark_redelivered(message)
            payload = json.dumps(message)
            task_id = (message.get("headers") or {}).get("id")
        except (ValueError, TypeError, KeyError, AttributeError):
            tag, payload, task_id = "", raw, None  # the worker dead-letters it on read
        found.append((raw, Stranded(tag=tag, delivered_at=0.0, task_id=task_id,
                                    payload=payload)))
    return found


def restore_stranded(client: redis.Redis, queue: str, *, lease_key: str,
                     lease_token: str) -> list[Stranded]:
    """Move ``queue``'s stranded messages to its head; the oldest is the next one consumed.

    BRPOP/BLMOVE read the right end and RPUSH writes there, so the newest is pushed first and
    the oldest last. Each move is one atomic Lua call that first checks the lease. In-flight
    messages were taken after any ``unacked``-only one (those predate the in-flight list), so
    they are pushed first.
    """
    move_inflight = client.register_script(_MOVE_INFLIGHT)
    move = client.register_script(_MOVE)
    restored: list[Stranded] = []
    for raw, stranded in reversed(find_inflight(client, queue)):
        moved = move_inflight(
            keys=[keys.inflight(queue), keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX, queue,
                  lease_key],
            args=[raw, stranded.payload, stranded.tag, lease_token])
        _check_lease(moved, lease_key, queue)
        if moved == 1:
            restored.append(stranded)
    for stranded in reversed(find_stranded(client, queue)):
        moved = move(keys=[keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX, queue, lease_key],
                     args=[stranded.tag, stranded.payload, lease_token])
        _check_lease(moved, lease_key, queue)
        if moved == 1:
            restored.append(stranded)
    restored.reverse()
    for stranded in restored:
        log.warning("restored stranded message %s (task %s) to the head of %s",
                    stranded.tag, stranded.task_id, queue)
    return restored


def _check_lease(moved: Any, lease_key: str, queue: str) -> None:
    if moved == -1:
        raise LeaseNotHeld(f"lost the lease {lease_key} while restoring {queue}")


def _mark_redelivered(message: dict) -> None:  # type: ignore[type-arg]
    # What kombu's own restore does (Channel._do_restore_message).
    headers = message.get("headers")
    if isinstance(headers, dict):
        headers["redelivered"] = True
    delivery_info = (message.get("properties") or {}).get("delivery_info")
    if isinstance(delivery_info, dict):
        delivery_info["redelivered"] = True
