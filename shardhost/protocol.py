"""The Redis side of consuming one shard queue: take, ack, wait, renew. Nothing else.

Every take is one Lua call (``lua/take.lua``) that checks the shard lease and moves messages
from the queue into the shard's in-flight list in the same atomic step: a consumer can never
take a message while another owns the shard, however long it was paused after its own checks.
Waiting for work is a non-destructive blocking peek (``BLMOVE q q RIGHT RIGHT``: the head goes
back where it was), so a consumer blocked in Redis while it loses its lease takes nothing.
Acks remove exactly their own entry (acks of several users' messages come out of order) and,
like takes, only while the lease is the caller's. The scripts live beside this module as
``.lua`` files so the protocol can be read and reviewed as itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import redis

from routing import keys
from routing.envelope import USER_HEADER

_LUA = Path(__file__).with_name("lua")

__all__ = ["USER_HEADER", "LeaseNotOwned", "ShardQueue", "Taken", "renew_many", "script_text"]


@cache
def script_text(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return (_LUA / f"{name}.lua").read_text()


class LeaseNotOwned(Exception):
    """A take or an ack found the shard lease held by someone else (or by nobody)."""


@dataclass(frozen=True)
class Taken:
    """What one take call moved into the in-flight list, oldest first."""

    items: list[bytes]
    #: Length of the queue before the take (0: nothing to wait behind, block on the peek).
    queue_length: int


def take_args(token: str, room: int, window: int, busy: list[str] | tuple[str, ...] = ()
              ) -> list[Any]:
    """ARGV of ``take.lua``."""
    return [token, room, window, *busy]


def parse_take(reply: Any) -> Taken:
    """The reply of ``take.lua``; raises :class:`LeaseNotOwned` for ``{-1}``."""
    if int(reply[0]) == -1:
        raise LeaseNotOwned("the shard lease is not ours")
    return Taken(items=list(reply[2:]), queue_length=int(reply[1]))


class ShardQueue:
    """One shard queue, consumed under a lease token (``keys.shard_lease(shard)``)."""

    def __init__(self, client: redis.Redis, shard: int, queue: str) -> None:
        self.redis = client
        self.queue = queue
        self.inflight = keys.inflight(queue)
        self.lease_key = keys.shard_lease(shard)
        self._take = client.register_script(script_text("take"))
        self._ack = client.register_script(script_text("ack"))
        self._put_back = client.register_script(script_text("put_back"))

    def take(self, token: str, room: int, window: int, busy: list[str] | tuple[str, ...] = ()
             ) -> Taken:
        """Move up to ``room`` runnable messages into the in-flight list (see ``take.lua``)."""
        reply = self._take(keys=[self.queue, self.inflight, self.lease_key],
                           args=take_args(token, room, window, busy))
        return parse_take(reply)

    def ack(self, token: str, raw: bytes) -> bool:
        """Remove ``raw`` from the in-flight list; False when the lease is no longer ours (the
        message then belongs to the next owner, who restores it and finds it done)."""
        return int(self._ack(keys=[self.inflight, self.lease_key], args=[token, raw])) >= 0

    def put_back_untracked(self, token: str, tracked: set[bytes]) -> int:
        """Put every in-flight message not in ``tracked`` back at the head, oldest nearest it
        (see ``put_back.lua``); returns how many. Raises :class:`LeaseNotOwned`."""
        items = self.redis.execute_command("LRANGE", self.inflight, 0, -1, NEVER_DECODE=True)
        untracked = [raw for raw in items if raw not in tracked]
        if not untracked:
            return 0
        moved = int(self._put_back(keys=[self.queue, self.inflight, self.lease_key],
                                   args=[token, *untracked]))
        if moved < 0:
            raise LeaseNotOwned("the shard lease is not ours")
        return moved

    def wait(self, timeout_s: float) -> bool:
        """Block until the queue holds a message or ``timeout_s`` passes; moves nothing."""
        return self.redis.blmove(self.queue, self.queue, timeout_s,  # type: ignore[arg-type]
                                "RIGHT", "RIGHT") is not None


def renew_many(client: redis.Redis, leases: list[tuple[str, str]], ttl_ms: int) -> list[bool]:
    """Renew ``(lease key, token)`` pairs in one round trip; True where still ours."""
    if not leases:
        return []
    script = client.register_script(script_text("renew_many"))
    reply = script(keys=[key for key, _ in leases], args=[ttl_ms, *(t for _, t in leases)])
    return [bool(int(r)) for r in reply]
