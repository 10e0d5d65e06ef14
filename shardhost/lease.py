"""The shard lease: at most one worker consumes a shard queue at a time.

The lease is one Redis hash (``keys.shard_lease``) with an expiry: the owner's random token,
the fencing number of this acquisition (``INCR`` of ``keys.shard_fence``), who holds it
(``host:pid``) and when it was last taken or renewed (``renewed_at``, Redis' own clock, so
the heartbeat age reads the same from every host). Every change is a compare-and-set in Lua
on the owner token, so a worker can never renew or release a lease that is no longer its
own. This module never consumes, restores or acks a message; it only says who may.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

import redis

from routing import keys
from routing.replies import text_map

# Unix seconds of Redis' clock as "s.micros": when a lease was taken or renewed.
_NOW = """
local function now()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
"""

# KEYS: lease, fence. ARGV: token, holder, ttl_ms, breakable_token ("" if none)
# Returns the fence of the lease now held by ``token``, or false if someone else holds it.
_ACQUIRE = _NOW + """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner == ARGV[1] then
  redis.call('HSET', KEYS[1], 'renewed_at', now())
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return tonumber(redis.call('HGET', KEYS[1], 'fence'))
end
if owner and owner ~= ARGV[4] then return false end
local fence = redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'fence', fence, 'holder', ARGV[2],
           'renewed_at', now())
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return fence
"""

# KEYS: lease. ARGV: token, ttl_ms. 1 if renewed, 0 if the lease is not ours.
_RENEW = _NOW + """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'renewed_at', now())
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: lease. ARGV: token. 1 if released, 0 if the lease was not ours.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


@dataclass(frozen=True)
class LeaseHolder:
    """What the lease hash says about its current owner."""

    owner: str
    fence: int
    holder: str  # "host:pid"
    ttl_ms: int
    #: Redis' clock (unix seconds) at the last acquisition or renewal; None if not recorded.
    renewed_at: float | None = None


def parse_lease(fields: dict[str, str] | dict[bytes, bytes], ttl_ms: int) -> LeaseHolder | None:
    """The :class:`LeaseHolder` of a lease hash (``HGETALL``) and its ``PTTL``; None if free."""
    if not fields:
        return None
    text = text_map(fields)
    renewed_at = text.get("renewed_at")
    return LeaseHolder(owner=text.get("owner", ""), fence=int(text.get("fence", 0)),
                       holder=text.get("holder", ""), ttl_ms=int(ttl_ms),
                       renewed_at=float(renewed_at) if renewed_at else None)


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def holder_is_dead(holder: str) -> bool:
    """True only when ``holder`` ("host:pid") is a process of this host that no longer runs.

    A holder on another host is never judged dead here: only its lease expiry frees it.
    """
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class ShardLease:
    """One worker's claim on one shard. ``acquire`` / ``renew`` / ``release`` are atomic."""

    def __init__(self, client: redis.Redis, shard: int, *, ttl_s: float,
                 holder: str | None = None) -> None:
        if ttl_s <= 0:
            raise ValueError(f"lease TTL must be > 0 seconds, got {ttl_s}")
        self.redis = client
        self.shard = shard
        self.ttl_s = ttl_s
        self.key = keys.shard_lease(shard)
        self.fence_key = keys.shard_fence(shard)
        self.token = uuid.uuid4().hex
        self.holder = holder or this_process()
        #: Fencing number of the current acquisition; None while not held.
        self.fence: int | None = None
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @property
    def ttl_ms(self) -> int:
        return max(int(self.ttl_s * 1000), 1)

    def current(self) -> LeaseHolder | None:
        """Who holds the lease now, or None when it is free."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.key)
            pipe.pttl(self.key)
            fields, ttl_ms = pipe.execute()
        return parse_lease(fields, ttl_ms)

    def acquire(self) -> int | None:
        """Take the lease if free, ours, or held by a dead process of this host.

        Returns the fencing number, or None when another live worker holds it.
        """
        breakable = ""
        current = self.current()
        if current is not None and current.owner != self.token and holder_is_dead(current.holder):
            breakable = current.owner  # CAS: only that dead owner's lease is broken
        fence = self._acquire(keys=[self.key, self.fence_key],
                              args=[self.token, self.holder, self.ttl_ms, breakable])
        self.fence = None if fence is None else int(fence)
        return self.fence

    def renew(self) -> bool:
        """Extend the lease by its TTL; False means it is no longer ours (stop at once)."""
        renewed = bool(self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))
        if not renewed:
            self.fence = None
        return renewed

    def release(self) -> bool:
        """Give the lease up so a standby takes over at once; False if it was not ours."""
        released = bool(self._release(keys=[self.key], args=[self.token]))
        self.fence = None
        return released
