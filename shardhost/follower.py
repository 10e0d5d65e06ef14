"""Which shards a process should consume, by the shard map in Redis (``routing.shardmap``).

Every shard of the map's count (or of an explicit ``SHARD_RANGE``), plus shards a shrinking
rescale removed that have not drained away yet (``services.barrier``); of those, a shard host
takes its own share: the shards ``s`` with ``s % hosts == slot``.
"""

from __future__ import annotations

import redis

from routing.shardmap import epoch_counts, read_shard_map
from services.barrier import shard_drained_away


class ShardMapFollower:
    """Which shards to run by the shard map: every shard of the map (or of ``allowed``), plus
    removed ones that have not drained away yet."""

    def __init__(self, client: redis.Redis, default_count: int,
                 allowed: frozenset[int] | None, *, slot: int = 0, hosts: int = 1) -> None:
        self.redis = client
        self.default_count = default_count
        self.allowed = allowed
        self.slot = slot
        self.hosts = hosts

    def wanted(self) -> set[int]:
        current = read_shard_map(self.redis, self.default_count)
        shards = set(range(current.count))
        if current.epoch:
            before = epoch_counts(self.redis, self.default_count).get(current.epoch - 1, 0)
            shards |= {s for s in range(current.count, before)
                       if not shard_drained_away(self.redis, s, self.default_count)}
        return {s for s in shards if (self.allowed is None or s in self.allowed)
                and s % self.hosts == self.slot}

    def removed(self, shard: int) -> bool:
        """Whether a rescale took ``shard`` out of the map."""
        return shard >= read_shard_map(self.redis, self.default_count).count
