"""Per-user holds (``ORDERED_ON_FAILURE=hold``): a parked message holds the user's later ones.

A user is *held* while their hold set (``keys.hold``) names a parked dead letter. Each of
their ordered messages that arrives meanwhile is appended to their held list
(``keys.held``) instead of running. When the last parked one is replayed (and succeeds) or
discarded, the shard worker itself runs the held list, oldest first, before any message that
arrived later: that worker is the only one that runs this user's messages, so nothing can
overtake. This module only keeps the state; it must never run or publish a message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from routing import keys

#: Message header naming the dead letter a replayed message came from (``shardline dlq replay``):
#: such a message runs although its user is held, and releases the hold when it succeeds.
REPLAY_HEADER = "shardline_replay"

# KEYS: hold, held   ARGV: message_json
# The check and the append are one step, so an operator's release cannot slip in between.
_ADMIT = """
if redis.call('SCARD', KEYS[1]) > 0 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 'held'
end
if redis.call('LLEN', KEYS[2]) > 0 then return 'drain' end
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

    def to_json(self) -> str:
        return json.dumps({"task": self.task, "id": self.id, "args": self.args,
                           "kwargs": self.kwargs})

    @classmethod
    def from_json(cls, raw: str) -> HeldMessage:
        data = json.loads(raw)
        return cls(task=data["task"], id=data.get("id"), args=list(data.get("args") or []),
                   kwargs=dict(data.get("kwargs") or {}))


class HoldStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._admit = client.register_script(_ADMIT)

    def admit(self, user: str, message: HeldMessage) -> Admission:
        """Hold ``message`` if ``user`` is held; else say whether held ones must run first."""
        result = self._admit(keys=[keys.hold(user), keys.held(user)], args=[message.to_json()])
        return Admission(result.decode() if isinstance(result, bytes) else result)

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
        return [HeldMessage.from_json(str(r)) for r in self.redis.lrange(keys.held(user), 0, -1)]
