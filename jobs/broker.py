"""Which job messages the broker still holds: waiting in a queue or reserved by a worker.

kombu's Redis transport keeps a queue as one list per priority step (the queue's own name for
step 0, ``queue + sep + step`` for the others: ``routing.kombu_lists``) and a
message a worker has taken, until it is acked, in its ``unacked`` hash (delivery tag -> JSON
``[envelope, exchange, routing_key]``). Every one of these keys carries the transport's
``global_keyprefix``. A stored envelope names its task in ``headers.id``.

The maintenance pass reads all of this once per pass, in one MULTI, so a message kombu moves
between a list and ``unacked`` (a restore) is seen in exactly one of them. A message is in
neither for the moment between kombu's BRPOP and its write to ``unacked``; one missed that way
is sent twice, which is harmless for a job (see ``jobs.control.redispatch_lost_jobs``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import redis

from routing import keys
from routing.kombu_lists import key_prefix, priority_lists


def _envelope_id(envelope: Any) -> str:
    """The task id of a kombu envelope; '' for anything that is not one."""
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    return str(headers.get("id") or "") if isinstance(headers, dict) else ""


def _waiting_id(item: str | bytes) -> str:
    try:
        return _envelope_id(json.loads(item))
    except ValueError:
        return ""  # not JSON: the worker's transport dead-letters it when it takes it


def _reserved_id(entry: str | bytes) -> str:
    try:
        record = json.loads(entry)
    except ValueError:
        return ""
    return _envelope_id(record[0]) if isinstance(record, list) and record else ""


def held_task_ids(client: redis.Redis, queues: Iterable[str]) -> set[str]:
    """Task ids waiting in ``queues`` (every priority sub-list) or unacked, in one round trip."""
    prefix = key_prefix()
    lists = [prefix + name for queue in queues for _, name in priority_lists(queue)]
    with client.pipeline(transaction=True) as pipe:
        for name in lists:
            pipe.lrange(name, 0, -1)
        pipe.hvals(prefix + keys.KOMBU_UNACKED)
        *waiting, unacked = pipe.execute()
    held = {_waiting_id(item) for items in waiting for item in items}
    held |= {_reserved_id(entry) for entry in unacked}
    held.discard("")
    return held
