"""The publish script: claim, number and enqueue a batch of ordered messages in one Lua call.

First the epoch fence: the batch was routed under one shard-map epoch (``routing.shardmap``);
if the map in Redis is at another epoch now, the script enqueues nothing, counts the refusal
(``keys.STALE_EPOCH_PUBLISHES``) and raises :class:`StaleEpoch` here, and the caller re-routes
under the new map and calls again. A rescale switches the epoch in one Lua call, so no message
routed under an old map can enter a queue after the switch. Then for each message, atomically
and in input order, Redis:

1. checks its idempotency key (``keys.dedup(user, message id)``) when it has a message id.
   A key held by another task id makes it a duplicate: nothing is enqueued, the original's
   task id comes back and ``keys.DUPLICATES_DROPPED`` counts it. A key held by its own task
   id means this very publish ran before and only its reply was lost (the producer retries
   with the same task ids): nothing is enqueued again, and the number it was given comes
   back, so no number is spent on a copy (the worker would count the gap it leaves);
2. gives it the user's next sequence number (``HINCRBY keys.USER_SEQ user 1``) and writes it
   into the envelope in place of ``routing.envelope.SEQ_PLACEHOLDER``; an envelope without
   the placeholder (a control message: ``release_held``, a notice, a replay) is not numbered;
3. LPUSHes it onto its shard queue (kombu's Redis layout: consumers read the right end), and
   claims its key for ``DEDUP_WINDOW_S`` as ``<number>:<task id>``.

One EVALSHA per batch is one round trip, and a batch is all or nothing: every check that can
fail runs in Python before the call, and a script runs to its end without interleaving with
any other client. This module only publishes what it is given; it never routes or validates.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from routing import keys
from routing.envelope import SEQ_PLACEHOLDER
from routing.replies import as_text

# KEYS: [1] seq hash, [2] duplicates counter, [3] shard map, [4] stale-epoch counter,
#       then per message: queue, dedup key ('' if none).
# ARGV: [1] dedup window (s), [2] seq mark, [3] the map the batch was routed under as
#       '<epoch>:<count>' ('' = pinned map, no fence), then per message: user, task id,
#       envelope. With no map in Redis yet, the first fenced publish writes it (the first
#       publisher or consumer of a deployment fixes its shard count).
# Returns per message: the seq number (integer; 0 if the envelope has no seq mark; for a
# retry of a publish that ran, the number it was given), or the original task id (a
# duplicate); or, for the whole batch, 'stale-epoch:<epoch now>:<count now>' with nothing
# enqueued. A claim written before claims held numbers is the bare task id.
_PUBLISH = """
local window = tonumber(ARGV[1])
local mark = ARGV[2]
if ARGV[3] ~= '' then
  local want_epoch, want_count = string.match(ARGV[3], '^(%d+):(%d+)$')
  local map = redis.call('HMGET', KEYS[3], 'epoch', 'count')
  if not map[2] then
    redis.call('HSET', KEYS[3], 'count', want_count, 'epoch', '0')
    map = {'0', want_count}
  end
  local epoch = map[1] or '0'
  if epoch ~= want_epoch or map[2] ~= want_count then
    redis.call('INCR', KEYS[4])
    return 'stale-epoch:' .. epoch .. ':' .. map[2]
  end
end
local out = {}
local n = (#KEYS - 4) / 2
for i = 1, n do
  local queue, claim = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  local user, task_id, envelope = ARGV[1 + 3 * i], ARGV[2 + 3 * i], ARGV[3 + 3 * i]
  local original, given = false, false
  local held = claim ~= '' and redis.call('GET', claim)
  if held then
    local held_seq, held_id = string.match(held, '^(%d+):(.*)$')
    if held_seq and held_id == task_id then
      given = tonumber(held_seq)
    else
      original = held_id or held
    end
  end
  if given then
    out[i] = given
  elseif original then
    redis.call('INCR', KEYS[2])
    out[i] = original
  else
    local seq = 0
    local at = string.find(envelope, mark, 1, true)
    if at then
      seq = redis.call('HINCRBY', KEYS[1], user, 1)
      envelope = string.sub(envelope, 1, at - 1) .. seq .. string.sub(envelope, at + #mark)
    end
    redis.call('LPUSH', queue, envelope)
    if claim ~= '' then
      redis.call('SET', claim, seq .. ':' .. task_id, 'EX', window)
    end
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


class StaleEpoch(Exception):
    """The batch was routed under another shard-map epoch than Redis has now: nothing sent."""

    def __init__(self, expected: int, current: int, count: int | None) -> None:
        super().__init__(f"routed under shard-map epoch {expected}, but the map is at {current}")
        self.expected = expected
        self.current = current
        #: The map's shard count now (``None`` when no map is written: ``SHARD_COUNT``).
        self.count = count


@dataclass(frozen=True)
class Published:
    #: The user's sequence number (0: a control message, not numbered; for a retried publish
    #: that had run, the number it was given then), or ``None`` for a duplicate (nothing was
    #: enqueued).
    seq: int | None
    #: The message's task id; for a duplicate, the original's.
    task_id: str


class PublishScript:
    """The publish script registered on one Redis client (EVALSHA, EVAL on NOSCRIPT)."""

    def __init__(self, client: redis.Redis, dedup_window_s: int) -> None:
        self.redis = client
        self.dedup_window_s = dedup_window_s
        self._script = client.register_script(_PUBLISH)

    def __call__(self, batch: list[Outgoing], epoch: int | None = None,
                 count: int | None = None) -> list[Published]:
        """Publish ``batch``, routed under shard-map ``epoch`` with ``count`` shards (epoch
        ``None``: a pinned map, not fenced); raises :class:`StaleEpoch`, having sent nothing,
        if the map in Redis is another one (moved on, or a deployment with another count)."""
        if not batch:
            return []
        script_keys: list[str] = [keys.USER_SEQ, keys.DUPLICATES_DROPPED, keys.SHARD_MAP,
                                  keys.STALE_EPOCH_PUBLISHES]
        fence = "" if epoch is None else f"{epoch}:{count}"
        args: list[str | int] = [self.dedup_window_s, SEQ_PLACEHOLDER, fence]
        for out in batch:
            script_keys += [out.queue, out.claim_key or ""]
            args += [out.user, out.task_id, out.envelope]
        replies = self._script(keys=script_keys, args=args)
        if isinstance(replies, (bytes, str)):
            _, current, now_count = as_text(replies).split(":")
            raise StaleEpoch(-1 if epoch is None else epoch, int(current),
                             int(now_count) if now_count else None)
        results = []
        for out, reply in zip(batch, replies, strict=True):
            if isinstance(reply, int):
                results.append(Published(seq=reply, task_id=out.task_id))
            else:
                results.append(Published(seq=None, task_id=as_text(reply)))
        return results
