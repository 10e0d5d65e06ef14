"""The publish script: claim, number and enqueue a batch of ordered messages in one Lua call.

For each message, atomically and in input order, Redis:

1. claims its idempotency key (``SET NX EX`` of ``keys.dedup(user, message id)``) when it has
   a message id; a key already held makes it a duplicate: nothing is enqueued, the original's
   task id comes back and ``keys.DUPLICATES_DROPPED`` counts it;
2. gives it the user's next sequence number (``HINCRBY keys.USER_SEQ user 1``) and writes it
   into the envelope in place of ``routing.envelope.SEQ_PLACEHOLDER``;
3. LPUSHes it onto its shard queue (kombu's Redis layout: consumers read the right end).

One EVALSHA per batch is one round trip, and a batch is all or nothing: every check that can
fail runs in Python before the call, and a script runs to its end without interleaving with
any other client. This module only publishes what it is given; it never routes or validates.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from routing import keys
from routing.envelope import SEQ_PLACEHOLDER

# KEYS: [1] seq hash, [2] duplicates counter, then per message: queue, dedup key ('' if none).
# ARGV: [1] dedup window (s), then per message: user, task id, envelope.
# Returns per message: the seq number (integer), or the original task id (a duplicate).
_PUBLISH = """
local window = tonumber(ARGV[1])
local mark = ARGV[2]
local out = {}
local n = (#KEYS - 2) / 2
for i = 1, n do
  local queue, claim = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local user, task_id, envelope = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  local original = false
  if claim ~= '' then
    if not redis.call('SET', claim, task_id, 'NX', 'EX', window) then
      original = redis.call('GET', claim)
    end
  end
  if original then
    redis.call('INCR', KEYS[2])
    out[i] = original
  else
    local seq = redis.call('HINCRBY', KEYS[1], user, 1)
    local at = string.find(envelope, mark, 1, true)
    envelope = string.sub(envelope, 1, at - 1) .. seq .. string.sub(envelope, at + #mark)
    redis.call('LPUSH', queue, envelope)
    out[i] = seq
  end
end
return out
"""


@dataclass(frozen=True)
class Outgoing:
    """One built message on its way: its user, shard queue, task id, envelope and claim."""

    user: str
    queue: str
    task_id: str
    envelope: str
    #: ``keys.dedup(user, message id)``, or ``None`` for a message without a message id.
    claim_key: str | None = None


@dataclass(frozen=True)
class Published:
    #: The user's sequence number, or ``None`` for a duplicate (nothing was enqueued).
    seq: int | None
    #: The message's task id; for a duplicate, the original's.
    task_id: str


class PublishScript:
    """The publish script registered on one Redis client (EVALSHA, EVAL on NOSCRIPT)."""

    def __init__(self, client: redis.Redis, dedup_window_s: int) -> None:
        self.redis = client
        self.dedup_window_s = dedup_window_s
        self._script = client.register_script(_PUBLISH)

    def __call__(self, batch: list[Outgoing]) -> list[Published]:
        if not batch:
            return []
        script_keys: list[str] = [keys.USER_SEQ, keys.DUPLICATES_DROPPED]
        args: list[str | int] = [self.dedup_window_s, SEQ_PLACEHOLDER]
        for out in batch:
            script_keys += [out.queue, out.claim_key or ""]
            args += [out.user, out.task_id, out.envelope]
        replies = self._script(keys=script_keys, args=args)
        results = []
        for out, reply in zip(batch, replies, strict=True):
            if isinstance(reply, int):
                results.append(Published(seq=reply, task_id=out.task_id))
            else:
                original = reply.decode() if isinstance(reply, bytes) else str(reply)
                results.append(Published(seq=None, task_id=original))
        return results
