"""Producer-side idempotency: the first dispatch of a (user, message id) claims it for a window.

A claim is ``SET NX EX`` of ``keys.dedup(user, message_id)`` with the task id as its value, so
a duplicate learns the task id of the original. Claims for a whole batch are one pipelined
round trip. This store only answers "first or duplicate?"; it must never publish anything.
The worker side has its own guard (the done-marker of ``services.conversation``).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from routing import keys

# KEYS: claim keys   ARGV: task ids (same order): delete a claim only if it is still ours.
_RELEASE = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then n = n + redis.call('DEL', key) end
end
return n
"""


@dataclass(frozen=True)
class Claim:
    user: str
    message_id: str
    task_id: str


@dataclass(frozen=True)
class ClaimResult:
    #: True when this call claimed the message id first.
    first: bool
    #: The task id that owns the message id (ours when ``first``, the original's otherwise).
    task_id: str


class DedupStore:
    def __init__(self, client: redis.Redis, window_s: int) -> None:
        self.redis = client
        self.window_s = window_s
        self._release = client.register_script(_RELEASE)

    def claim_many(self, claims: list[Claim]) -> list[ClaimResult]:
        """Claim every (user, message id) in one round trip; a repeat in ``claims`` loses too."""
        if not claims:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for c in claims:
                key = keys.dedup(c.user, c.message_id)
                pipe.set(key, c.task_id, nx=True, ex=self.window_s)
                pipe.get(key)
            replies = pipe.execute()
        results = []
        for i, c in enumerate(claims):
            won, owner = replies[2 * i], replies[2 * i + 1]
            owner_id = owner.decode() if isinstance(owner, bytes) else owner
            results.append(ClaimResult(first=bool(won), task_id=str(owner_id or c.task_id)))
        return results

    def release(self, claims: list[Claim]) -> int:
        """Undo claims whose publish failed, so the producer's retry is not a 'duplicate'."""
        if not claims:
            return 0
        return int(self._release(keys=[keys.dedup(c.user, c.message_id) for c in claims],
                                 args=[c.task_id for c in claims]))
