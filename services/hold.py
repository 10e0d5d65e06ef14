"""Per-user holds (``ORDERED_ON_FAILURE=hold``): a parked message holds the user's later ones.

A user is *held* while their hold set (``keys.hold``) names a parked dead letter. Each of
their ordered messages that arrives meanwhile is appended to their held list
(``keys.held``) instead of running. When the last parked one is replayed (and succeeds) or
discarded, the shard worker itself runs the held list, oldest first, before any message that
arrived later: that worker is the only one that runs this user's messages, so nothing can
overtake. This module only keeps the state; it must never run or publish a message.

A rescale's drain barrier (``services.barrier``) holds a moved user the same way, with the
reason ``barrier:<epoch>:<old shard>`` in the hold set, in every failure mode. Such a reason
holds only the user's messages routed under that epoch or a later one: the older ones still
run on the old shard, and they are what the barrier waits for. The held list is kept in the
users' publish order (``shardline_seq``, then the epoch), not in arrival order: while a moved
user is held, their older messages can reach the list after newer ones (in hold mode, on the
old shard); each is inserted behind the last held message that was published before it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from routing import keys
from routing.replies import as_text

#: Message header naming the dead letter a replayed message came from (``shardline dlq replay``):
#: such a message runs although its user is held, and releases the hold when it succeeds.
REPLAY_HEADER = "shardline_replay"

# KEYS: hold, held, then for a moved user (else ''): the barrier hash, its waiting set.
# ARGV: message JSON, seq ('' if none), epoch ('' if none), old shard, hold reason, user.
# The checks and the hold are one step, so neither an operator's release nor a barrier
# marker passing (services/barrier.py) can slip in between.
_ADMIT = """
local seq, epoch = tonumber(ARGV[2]), tonumber(ARGV[3])
-- true when held message ``raw`` was published before this one (the list's order)
local function before(raw)
  local other = cjson.decode(raw)
  local other_seq, other_epoch = tonumber(other.seq), tonumber(other.epoch)
  if seq and other_seq then return other_seq < seq end
  if epoch and other_epoch and other_epoch ~= epoch then return other_epoch < epoch end
  return true
end
-- insert behind the last held message published before this one (usually the tail)
local function hold()
  local n = redis.call('LLEN', KEYS[2])
  for i = -1, -n, -1 do
    local item = redis.call('LINDEX', KEYS[2], i)
    if before(item) then
      if i == -1 then redis.call('RPUSH', KEYS[2], ARGV[1])
      else redis.call('LINSERT', KEYS[2], 'AFTER', item, ARGV[1]) end
      return 'held'
    end
  end
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 'held'
end
if KEYS[3] ~= '' and redis.call('HEXISTS', KEYS[3], ARGV[4]) == 0 then
  redis.call('SADD', KEYS[1], ARGV[5])
  redis.call('SADD', KEYS[4], ARGV[6])
  return hold()
end
for _, reason in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local from = tonumber(string.match(reason, '^barrier:(%d+):'))
  if not from or (epoch and epoch >= from) then return hold() end
end
local head = redis.call('LINDEX', KEYS[2], 0)
if head and before(head) then return 'drain' end
return 'run'
"""


class Admission(StrEnum):
    #: The user is held: the message was appended to their held list.
    HELD = "held"
    #: Not held, but earlier held messages wait to run: run those first.
    DRAIN = "drain"
    #: Nothing held: run the message.
    RUN = "run"


@dataclass(frozen=True)
class HeldMessage:
    task: str
    id: str | None
    args: list[Any]
    kwargs: dict[str, Any]
    #: The user's sequence number and the shard-map epoch it was published with, if any.
    seq: int | None = None
    epoch: int | None = None

    def to_json(self) -> str:
        return json.dumps({"task": self.task, "id": self.id, "args": self.args,
                           "kwargs": self.kwargs, "seq": self.seq, "epoch": self.epoch})

    @classmethod
    def from_json(cls, raw: str) -> HeldMessage:
        data = json.loads(raw)
        return cls(task=data["task"], id=data.get("id"), args=list(data.get("args") or []),
                   kwargs=dict(data.get("kwargs") or {}), seq=data.get("seq"),
                   epoch=data.get("epoch"))


@dataclass(frozen=True)
class BarrierCheck:
    """A moved user's message must wait until its old shard passes the epoch's marker."""

    #: ``keys.barrier(epoch)``: has the old shard passed its marker?
    barrier_key: str
    #: ``keys.barrier_waiting(epoch, old shard)``: the users to release when it does.
    waiting_key: str
    old_shard: int
    #: The hold-set member, ``barrier:<epoch>:<old shard>``.
    reason: str


class HoldStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._admit = client.register_script(_ADMIT)

    def admit(self, user: str, message: HeldMessage,
              barrier: BarrierCheck | None = None) -> Admission:
        """Hold ``message`` if ``user`` is held, or if ``barrier`` has not passed (the user is
        then held for it); else say whether held ones, published before it, must run first."""
        script_keys = [keys.hold(user), keys.held(user), barrier.barrier_key if barrier else "",
                       barrier.waiting_key if barrier else ""]
        args = [message.to_json(), _opt(message.seq), _opt(message.epoch),
                barrier.old_shard if barrier else "", barrier.reason if barrier else "", user]
        result = self._admit(keys=script_keys, args=args)
        return Admission(as_text(result))

    def is_held(self, user: str) -> bool:
        return bool(self.redis.scard(keys.hold(user)))

    def holding(self, user: str) -> set[str]:
        """Ids of the parked dead letters that hold ``user``."""
        return {str(m) for m in self.redis.smembers(keys.hold(user))}  # type: ignore[union-attr]

    def release(self, user: str, letter_id: str) -> bool:
        """Drop ``letter_id`` from ``user``'s hold; True when nothing holds the user any more."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.srem(keys.hold(user), letter_id)
            pipe.scard(keys.hold(user))
            _, left = pipe.execute()
        return int(left) == 0

    def head(self, user: str) -> HeldMessage | None:
        """The oldest held message, left in place until :meth:`pop_head` (crash safety)."""
        raw = self.redis.lindex(keys.held(user), 0)
        return HeldMessage.from_json(str(raw)) if raw else None

    def pop_head(self, user: str) -> None:
        self.redis.lpop(keys.held(user))

    def held(self, user: str) -> list[HeldMessage]:
        """``user``'s held messages, in the order they will run."""
        return [HeldMessage.from_json(str(r)) for r in self.redis.lrange(keys.held(user), 0, -1)]


def _opt(value: int | None) -> str | int:
    return "" if value is None else value
