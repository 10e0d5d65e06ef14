"""User id -> shard number: MurmurHash3 then jump consistent hashing.

MurmurHash3 x86_32 (seed 0, unsigned) over the UTF-8 bytes of the canonical user id gives a
stable 32-bit key on every platform and Python version (``hash()`` is salted per process).
Jump consistent hash (Lamping & Veach, 2014, arXiv:1406.2294) maps that key onto
``range(n)`` so that growing ``n`` to ``n + 1`` moves only about ``1 / (n + 1)`` of the users,
all of them onto the new shard; ``key % n`` would move ``n / (n + 1)`` of them.
"""

from __future__ import annotations

import mmh3

from routing.userid import canonical_user_id

_MASK64 = 0xFFFFFFFFFFFFFFFF
_JUMP_MULTIPLIER = 2862933555777941757


def key_hash(user_id: object) -> int:
    """The unsigned 32-bit MurmurHash3 of the canonical user id."""
    return mmh3.hash(canonical_user_id(user_id).encode("utf-8"), 0, signed=False)


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash of a 64-bit ``key`` onto ``range(buckets)``."""
    if buckets < 1:
        raise ValueError(f"bucket count must be >= 1, got {buckets!r}")
    key &= _MASK64
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * _JUMP_MULTIPLIER + 1) & _MASK64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def shard_for(user_id: object, shard_count: int) -> int:
    """The shard (``0 <= shard < shard_count``) that owns ``user_id``.

    Raises :class:`routing.InvalidUserId` for an id that cannot be routed and ``ValueError``
    for a shard count below 1.
    """
    return jump_hash(key_hash(user_id), shard_count)
