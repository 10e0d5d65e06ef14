"""Conversation history and the outbox, written together in one atomic step.

A reply, the user turn it answers, the outbox entry and the task's done-marker are written by
one Lua call: either all of them exist or none does. A message redelivered after a crash finds
its done-marker and is not delivered twice (the AI call itself may have run twice).

A shard worker's commit is fenced: the same call checks that the worker still owns the shard
lease, so a worker that was paused (SIGSTOP, a VM freeze, a long GC) past its lease cannot
write a reply after the next owner took over the shard (:class:`Fenced`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from routing import keys
from routing.replication import replicated_within_budget
from services.ai.base import Turn

# KEYS: done, history, outbox, feed, shard lease ('' when not fenced)
# ARGV: done_ttl_s, history_limit, user, turns_json, entry_json, lease owner token
# Returns the outbox entry id, false (already done) or 0 (fenced: the lease is not ours).
# An existing done-marker is written again (its TTL renewed): a commit retried because it was
# not replicated in time then has a write of its own for WAIT to count (routing.replication).
_COMMIT = """
if KEYS[5] ~= '' and redis.call('HGET', KEYS[5], 'owner') ~= ARGV[6] then return 0 end
if redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1])) == 1 then return false end
for _, turn in ipairs(cjson.decode(ARGV[4])) do
  redis.call('RPUSH', KEYS[2], cjson.encode(turn))
end
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
local fields = {}
for k, v in pairs(cjson.decode(ARGV[5])) do
  table.insert(fields, k); table.insert(fields, tostring(v))
end
local id = redis.call('XADD', KEYS[3], '*', unpack(fields))
redis.call('XADD', KEYS[4], '*', 'user', ARGV[3], 'id', id)
redis.call('SET', KEYS[1], id, 'EX', tonumber(ARGV[1]))
return id
"""


class Fenced(Exception):
    """The commit was refused: the shard lease it was fenced with is no longer the caller's."""


@dataclass(frozen=True)
class Fence:
    """The shard lease a commit must still hold: its key and this worker's owner token."""

    lease_key: str
    token: str


class ConversationStore:
    """Per-user history (capped list) and outbox (stream), in Redis."""

    def __init__(self, client: redis.Redis, *, history_limit: int, done_ttl_s: int,
                 wait_replicas: int = 0, wait_timeout_ms: int = 1000) -> None:
        self.redis = client
        self.history_limit = history_limit
        self.done_ttl_s = done_ttl_s
        #: REDIS_WAIT_REPLICAS: a commit returns only once this many replicas hold it, so the
        #: message is acked only after its done-marker survives a failover.
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._commit = client.register_script(_COMMIT)

    def history(self, user: str) -> list[Turn]:
        raw = self.redis.lrange(keys.history(user), -self.history_limit, -1)
        return [json.loads(item) for item in raw]

    def already_done(self, task_id: str) -> bool:
        return bool(self.redis.exists(keys.done(task_id)))

    def commit(
        self, user: str, task_id: str, turns: list[Turn], entry: Mapping[str, Any], *,
        fence: Fence | None = None,
    ) -> str | None:
        """Store ``turns`` and append ``entry`` to the outbox, once per ``task_id``.

        Returns the outbox entry id, or ``None`` when this task was already committed.
        Raises :class:`Fenced` (and writes nothing) when ``fence`` is no longer held.
        """
        fields = {k: v for k, v in entry.items() if v is not None}
        fields.setdefault("delivered_at", time.time())
        script_keys = [keys.done(task_id), keys.history(user), keys.outbox(user),
                       keys.OUTBOX_FEED, fence.lease_key if fence else ""]
        args: list[str | int] = [self.done_ttl_s, self.history_limit, user, json.dumps(turns),
                                 json.dumps(fields), fence.token if fence else ""]
        if self.wait_replicas:
            # Sent again until replicated: on the new master after a failover, the
            # done-marker says whether it is already there.
            [result] = replicated_within_budget(
                self.redis, lambda pipe: self._commit(keys=script_keys, args=args, client=pipe),
                self.wait_replicas, self.wait_timeout_ms)
        else:
            result = self._commit(keys=script_keys, args=args)
        if result == 0:
            raise Fenced(f"the shard lease {fence.lease_key if fence else ''} is no longer "
                         f"this worker's: reply to task {task_id} not written")
        return str(result) if result else None

    def outbox(self, user: str, count: int | None = None) -> list[dict[str, str]]:
        """The user's outbox entries, oldest first, each with its stream ``id``."""
        entries: list[tuple[str, dict[str, str]]] = self.redis.xrange(  # type: ignore[assignment]
            keys.outbox(user), count=count)
        return [{"id": entry_id, **fields} for entry_id, fields in entries]
