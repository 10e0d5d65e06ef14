"""The shard map: how many shard queues a deployment has, and since which epoch.

The map lives in Redis (``keys.SHARD_MAP``: ``count``, ``epoch``; ``keys.SHARD_MAP_EPOCHS``:
the count of every epoch so far). While it is absent the deployment has ``SHARD_COUNT``
shards at epoch 0, so a deployment that never rescales never writes it. Only
:func:`switch_epoch` (``shardline rescale``) changes it, in one Lua call that also queues the
epoch's drain-barrier markers on every old shard queue.

Every process keeps a :class:`ShardMapCache` and reads the map again once its copy is older
than ``SHARD_MAP_REFRESH_S``. Producers that publish through ``routing.dispatch`` are fenced
on top of that: the publish script refuses a batch routed under another epoch
(``routing.publish``), so nothing routed under an old map can enter a queue after a switch.
This module reads and switches the map; it never routes or publishes a user's message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from routing import keys
from routing.replies import as_text


@dataclass(frozen=True)
class ShardMap:
    """``count`` shard queues ``shard.0 .. shard.<count-1>``, valid since rescale ``epoch``."""

    count: int
    #: ``None`` for a map pinned in code (``ShardRouter(8)`` in tests and benchmarks): such a
    #: map is not the deployment's, so its messages are neither fenced nor barrier-checked.
    epoch: int | None


def read_shard_map(client: redis.Redis, default_count: int) -> ShardMap:
    """The map as Redis holds it now (``default_count`` at epoch 0 while none was written)."""
    count, epoch = client.hmget(keys.SHARD_MAP, ["count", "epoch"])  # type: ignore[misc]
    if count is None or epoch is None:
        return ShardMap(default_count, 0)
    return ShardMap(int(as_text(count)), int(as_text(epoch)))


def epoch_counts(client: redis.Redis, default_count: int) -> dict[int, int]:
    """Epoch -> shard count for every epoch so far. Until the first rescale records epoch 0,
    its count is the map's (written by the deployment's first publisher or consumer), or
    ``default_count`` while there is no map at all."""
    raw: Mapping[object, object] = client.hgetall(keys.SHARD_MAP_EPOCHS)  # type: ignore[assignment]
    counts = {int(as_text(e)): int(as_text(c)) for e, c in raw.items()}
    if 0 not in counts:
        current = read_shard_map(client, default_count)
        counts[0] = current.count if current.epoch == 0 else default_count
    return counts


# KEYS: map. ARGV: count. The map as it is now; written first (epoch 0) if there is none.
_CLAIM = """
if not redis.call('HGET', KEYS[1], 'count') then
  redis.call('HSET', KEYS[1], 'count', ARGV[1], 'epoch', '0')
end
return redis.call('HMGET', KEYS[1], 'count', 'epoch')
"""


def claim_shard_map(client: redis.Redis, count: int) -> ShardMap:
    """The deployment's map; a deployment's first consumer (or publisher) writes it with its
    ``SHARD_COUNT``, so from then on every process follows one count (``SHARD_COUNT`` of a
    process that disagrees is only its default before any map exists)."""
    reply = client.register_script(_CLAIM)(keys=[keys.SHARD_MAP], args=[count])
    return ShardMap(int(as_text(reply[0])), int(as_text(reply[1])))


class ShardMapCache:
    """One process's copy of the map, read again when older than ``refresh_s``."""

    def __init__(self, client: redis.Redis, default_count: int, refresh_s: float) -> None:
        self.redis = client
        self.default_count = default_count
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._map: ShardMap | None = None
        self._read_at = 0.0

    def current(self) -> ShardMap:
        """The cached map, read from Redis first if it is older than ``refresh_s``."""
        with self._lock:
            if self._map is not None and time.monotonic() - self._read_at < self.refresh_s:
                return self._map
        return self.refresh()

    def refresh(self) -> ShardMap:
        """Read the map from Redis now."""
        return self.adopt(read_shard_map(self.redis, self.default_count))

    def adopt(self, fresh: ShardMap) -> ShardMap:
        """Use ``fresh``, just learnt from Redis (a stale-epoch reply carries it)."""
        with self._lock:
            self._map, self._read_at = fresh, time.monotonic()
        return fresh


_caches: dict[str, ShardMapCache] = {}
_caches_lock = threading.Lock()


def cache_for(url: str) -> ShardMapCache:
    """The process-wide cache of the map in the Redis at ``url`` (router, runner, workers)."""
    import celeryconfig

    with _caches_lock:
        cache = _caches.get(url)
        if cache is None:
            client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=2)
            settings = celeryconfig.settings
            cache = ShardMapCache(client, settings.shard_count, settings.shard_map_refresh_s)
            _caches[url] = cache
        return cache


# KEYS: map, epochs, barrier(current epoch), then the queues of the old shards 0..N-1.
# ARGV: expected epoch, new count, old count, then one marker envelope per old shard.
# Refuses when the epoch moved since the caller read it, or while the current epoch's
# barrier has not released every old shard (the previous rescale is still draining).
_SWITCH = """
local current = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if current ~= tonumber(ARGV[1]) then return {'moved', current} end
if current > 0 then
  local before = tonumber(redis.call('HGET', KEYS[2], tostring(current - 1)) or '0')
  local released = 0
  for _, state in ipairs(redis.call('HVALS', KEYS[3])) do
    if state == 'released' then released = released + 1 end
  end
  if released < before then return {'draining', released, before} end
end
local now = redis.call('TIME')
redis.call('HSETNX', KEYS[2], tostring(current), ARGV[3])
redis.call('HSET', KEYS[2], tostring(current + 1), ARGV[2])
redis.call('HSET', KEYS[1], 'count', ARGV[2], 'epoch', current + 1,
           'switched_at', now[1] .. '.' .. string.format('%06d', tonumber(now[2])))
for i = 4, #KEYS do redis.call('LPUSH', KEYS[i], ARGV[i]) end
return {'ok', current + 1}
"""


class RescaleRefused(Exception):
    """The map could not be switched; the message says why and what to do."""


def switch_epoch(client: redis.Redis, *, expected: ShardMap, new_count: int,
                 markers: list[tuple[str, str]]) -> int:
    """Switch the map from ``expected`` to ``new_count`` shards at epoch ``expected.epoch + 1``
    and LPUSH each ``(queue, marker envelope)`` in the same Lua call; the new epoch.

    Publishes are fenced on the epoch, so every message routed under ``expected`` is already
    in its queue, ahead of that queue's marker, when this returns.
    """
    if expected.epoch is None:
        raise ValueError("a pinned shard map cannot be rescaled")
    if new_count < 1:
        raise ValueError(f"shard count must be >= 1, got {new_count}")
    script_keys = [keys.SHARD_MAP, keys.SHARD_MAP_EPOCHS, keys.barrier(expected.epoch)]
    script_keys += [queue for queue, _ in markers]
    args: list[str | int] = [expected.epoch, new_count, expected.count]
    args += [envelope for _, envelope in markers]
    reply = client.register_script(_SWITCH)(keys=script_keys, args=args)
    verdict = as_text(reply[0])
    if verdict == "moved":
        raise RescaleRefused(f"the shard map moved to epoch {reply[1]} meanwhile; run it again")
    if verdict == "draining":
        raise RescaleRefused(
            f"the rescale to epoch {expected.epoch} is still draining: {reply[1]} of "
            f"{reply[2]} old shards have passed their barrier marker")
    return int(reply[1])


def barrier_states(client: redis.Redis, epoch: int) -> dict[int, str]:
    """Old shard -> ``passed`` / ``released`` for the drain barrier of rescale ``epoch``;
    a shard missing from it has not yet reached its marker."""
    raw: Mapping[object, object] = client.hgetall(keys.barrier(epoch))  # type: ignore[assignment]
    return {int(as_text(shard)): as_text(state) for shard, state in raw.items()}
