"""The drain barrier of a rescale: a moved user's new messages wait for their old shard.

``shardline rescale`` switches the shard map to epoch E and, in the same Lua call, puts a
marker (``shardline.epoch_barrier(E, s)``) at the tail of every old shard queue ``s``.
Publishes are fenced on the epoch, so everything routed under E-1 is ahead of the markers.
A user whose shard under E-1's count differs from their shard under E's count has *moved*;
their messages routed under E arrive on the new shard, possibly while their older ones still
wait in the old shard's queue.

* :meth:`DrainBarrier.check_for` says whether a message must be checked: only a moved user's
  message routed under the epoch of the move (users not moved are never held, and nothing
  is asked of Redis for them).
* ``HoldStore.admit`` (``services.hold``) then checks, in one Lua call, whether the old
  shard has passed its marker; if not, it holds the message (hold reason
  ``barrier:E:<old shard>``, the per-user held list) and records the user as waiting.
* :meth:`DrainBarrier.pass_marker` runs when the old shard's worker reaches its marker: in
  one Lua call it marks the shard passed, drops that hold reason of every waiting user and
  returns them; the marker task then sends each one ``release_held`` (to the user's new shard,
  where their held messages run before anything newer) and calls :meth:`released`.

The counts of past epochs never change, so they are cached for the life of the process.
This module keeps the barrier's state; it never runs or publishes a message.
"""

from __future__ import annotations

import threading

import redis

from routing import keys
from routing.hashing import shard_for
from routing.queues import shard_queue
from routing.replies import as_text
from routing.shardmap import barrier_states, epoch_counts, read_shard_map
from services.hold import BarrierCheck

# KEYS: barrier hash, waiting set. ARGV: old shard, hold reason, prefix of the hold keys.
# Marks the shard passed (unless already released) and lifts the reason from every waiting
# user's hold set; returns those users. Atomic with HoldStore.admit's check-and-hold.
_PASS = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= 'released' then
  redis.call('HSET', KEYS[1], ARGV[1], 'passed')
end
local users = redis.call('SMEMBERS', KEYS[2])
for _, user in ipairs(users) do
  redis.call('SREM', ARGV[3] .. user, ARGV[2])
end
return users
"""


def hold_reason(epoch: int, old_shard: int) -> str:
    """The hold-set member of a user waiting for ``old_shard``'s ``epoch`` marker."""
    return f"barrier:{epoch}:{old_shard}"


class DrainBarrier:
    def __init__(self, client: redis.Redis, default_count: int) -> None:
        self.redis = client
        self.default_count = default_count
        self._counts: dict[int, int] = {}
        self._lock = threading.Lock()
        self._pass = client.register_script(_PASS)

    def count_at(self, epoch: int) -> int | None:
        """The shard count of ``epoch`` (``None`` if Redis does not know that epoch)."""
        with self._lock:
            if epoch not in self._counts:
                self._counts = epoch_counts(self.redis, self.default_count)
            return self._counts.get(epoch)

    def check_for(self, user: str, epoch: int | None, shard: int | None) -> BarrierCheck | None:
        """The barrier ``user``'s message routed under ``epoch``, now on ``shard``, must pass;
        ``None`` when the user did not move at ``epoch`` (or the message has no epoch)."""
        if epoch is None or epoch < 1:
            return None
        before, now = self.count_at(epoch - 1), self.count_at(epoch)
        if before is None or now is None:
            return None
        old = shard_for(user, before)
        if old == (shard_for(user, now) if shard is None else shard):
            return None
        return BarrierCheck(barrier_key=keys.barrier(epoch),
                            waiting_key=keys.barrier_waiting(epoch, old), old_shard=old,
                            reason=hold_reason(epoch, old))

    def pass_marker(self, epoch: int, shard: int) -> list[str]:
        """Shard ``shard`` reached its ``epoch`` marker: the users waiting for it, released
        from this barrier's hold (they still need ``release_held``; then :meth:`released`)."""
        users = self._pass(keys=[keys.barrier(epoch), keys.barrier_waiting(epoch, shard)],
                           args=[shard, hold_reason(epoch, shard), keys.hold("")])
        return sorted(as_text(u) for u in users)

    def released(self, epoch: int, shard: int) -> None:
        """The waiting users of ``shard``'s ``epoch`` marker were sent ``release_held``."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.barrier(epoch), str(shard), "released")
            pipe.delete(keys.barrier_waiting(epoch, shard))
            pipe.execute()


def shard_drained_away(client: redis.Redis, shard: int, default_count: int) -> bool:
    """True when a rescale removed ``shard`` (it is beyond the map's count), it has passed
    the removing epoch's marker and released its waiting users, and its queue and in-flight
    list are empty: its worker has nothing left to do."""
    current = read_shard_map(client, default_count)
    if current.epoch is None or current.epoch < 1 or shard < current.count:
        return False
    before = epoch_counts(client, default_count).get(current.epoch - 1, 0)
    if shard < before and barrier_states(client, current.epoch).get(shard) != "released":
        return False
    queue = shard_queue(shard)
    return int(client.llen(queue)) == 0 and int(client.llen(keys.inflight(queue))) == 0  # type: ignore[arg-type]
