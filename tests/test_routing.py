"""User id -> shard: the hash, the jump, the canonical id and the Celery router.

The hash and the jump are checked against independent implementations written here from the
published algorithms (MurmurHash3 x86_32 by Austin Appleby; jump consistent hash from Lamping
& Veach, arXiv:1406.2294), so a change to either in ``routing.hashing`` cannot go unnoticed:
every deployed producer and worker has to agree on them, and a silent change would move users
between shards while they have messages in flight.
"""

from __future__ import annotations

import math
import struct

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu import Queue

from routing import (
    InvalidDispatch,
    InvalidUserId,
    ShardRouter,
    canonical_user_id,
    jump_hash,
    key_hash,
    queue_for,
    shard_for,
)
from routing.queues import (
    ORDERED_TASKS,
    SEND_AI_RESPONSE,
    SHARD_QUEUE_PREFIX,
    WORKLOAD_ROUTES,
    shard_queue,
)

# ---- independent reference implementations ------------------------------------------------

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def murmur3_x86_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3_x86_32 written out from Appleby's reference C (MurmurHash3.cpp)."""
    c1, c2 = 0xCC9E2D51, 0x1B873593
    h = seed & _M32
    nblocks = len(data) // 4
    for (k,) in struct.iter_unpack("<I", data[: nblocks * 4]):
        k = (k * c1) & _M32
        k = _rotl32(k, 15)
        k = (k * c2) & _M32
        h ^= k
        h = _rotl32(h, 13)
        h = (h * 5 + 0xE6546B64) & _M32
    tail = data[nblocks * 4 :]
    k = 0
    if len(tail) >= 3:
        k ^= tail[2] << 16
    if len(tail) >= 2:
        k ^= tail[1] << 8
    if len(tail) >= 1:
        k ^= tail[0]
        k = (k * c1) & _M32
        k = _rotl32(k, 15)
        k = (k * c2) & _M32
        h ^= k
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


def jump_reference(key: int, num_buckets: int) -> int:
    """The paper's C++ (``int64_t b = -1, j = 0; while (j < n) {...}``) with C's wraparound."""
    b, j = -1, 0
    key %= 2**64
    while j < num_buckets:
        b = j
        key = (key * 2862933555777941757 + 1) % 2**64
        j = math.trunc((b + 1) * (float(2**31) / float((key >> 33) + 1)))
    return b


#: No per-example deadline: a slow first example on a busy machine is not a failure.
prop = settings(deadline=None, max_examples=300, database=None)

user_ids = st.one_of(
    st.integers(min_value=0, max_value=2**80),
    st.text(min_size=1, max_size=256),
)


# ---- the hash -----------------------------------------------------------------------------


def test_reference_murmur3_matches_published_vectors() -> None:
    """Guards the guard: the in-test MurmurHash3 must agree with known x86_32 outputs before
    it is trusted to check the router's."""
    assert murmur3_x86_32(b"", 0) == 0
    assert murmur3_x86_32(b"", 1) == 0x514E28B7
    assert murmur3_x86_32(b"hello", 0) == 0x248BFA47
    assert murmur3_x86_32(b"The quick brown fox jumps over the lazy dog", 0) == 0x2E4FF723


def test_key_hash_of_42_is_murmur3_of_its_utf8() -> None:
    """Breaks if the key stops being unsigned MurmurHash3 x86_32, seed 0, of the UTF-8 of
    str(user id): e.g. a signed hash, another seed, x64_128, or Python's salted hash()."""
    expected = murmur3_x86_32(b"42", 0)
    assert expected == mmh3.hash(b"42", 0, signed=False)
    assert key_hash(42) == key_hash("42") == expected
    assert 0 <= expected <= _M32


@prop
@given(user_ids)
def test_key_hash_matches_reference_for_any_id(user_id: int | str) -> None:
    """Breaks on any change of encoding or canonical form (e.g. hashing repr(), UTF-16, or
    canonicalising ints differently)."""
    canonical = str(user_id)
    assert key_hash(user_id) == murmur3_x86_32(canonical.encode("utf-8"), 0)


# ---- the jump -----------------------------------------------------------------------------

# Bucket of each key for num_buckets = 1, 2, 3, ...: outputs of the paper's C++ code, as
# published with the test suite of github.com/dgryski/go-jump.
_JUMP_VECTORS: dict[int, list[int]] = {
    0: [0] * 20,
    1: [0, 0, 0, 0, 0, 0, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 17, 17],
    0xDEADBEEF: [0, 1, 2, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 16, 16, 16],
    0x0DDC0FFEEBADF00D: [0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 15, 15, 15, 15],
}


@pytest.mark.parametrize("key", sorted(_JUMP_VECTORS))
def test_jump_hash_matches_the_papers_code_on_fixed_values(key: int) -> None:
    """Breaks if jump_hash drifts from Lamping & Veach (another multiplier, 32-bit key
    arithmetic, a different shift, rounding instead of truncation)."""
    for buckets, expected in enumerate(_JUMP_VECTORS[key], start=1):
        assert jump_reference(key, buckets) == expected, (key, buckets)
        assert jump_hash(key, buckets) == expected, (key, buckets)


@prop
@given(st.integers(min_value=0, max_value=_M64), st.integers(min_value=1, max_value=5000))
def test_jump_hash_matches_reference_for_any_key(key: int, buckets: int) -> None:
    """Same as above over the whole 64-bit key space and many bucket counts."""
    assert jump_hash(key, buckets) == jump_reference(key, buckets)


def test_jump_hash_rejects_zero_buckets() -> None:
    """Breaks if a shard count of 0 silently routes somewhere (e.g. to -1)."""
    with pytest.raises(ValueError, match="bucket count"):
        jump_hash(1, 0)
    with pytest.raises(ValueError):
        shard_for(1, 0)


# ---- shard_for ------------------------------------------------------------------------------


@prop
@given(user_ids, st.integers(min_value=1, max_value=1024))
def test_shard_for_is_deterministic_and_in_range(user_id: int | str, count: int) -> None:
    """Breaks if routing depends on anything but (id, count) or leaves range(count)."""
    shard = shard_for(user_id, count)
    assert 0 <= shard < count
    assert shard_for(user_id, count) == shard
    assert shard == jump_reference(murmur3_x86_32(str(user_id).encode("utf-8")), count)


@prop
@given(st.integers(min_value=0, max_value=2**80), st.integers(min_value=1, max_value=1024))
def test_int_and_its_decimal_string_are_the_same_user(user_id: int, count: int) -> None:
    """Breaks if 42 and "42" could land on different shards (their messages would race)."""
    assert shard_for(user_id, count) == shard_for(str(user_id), count)
    assert queue_for(user_id, count) == queue_for(str(user_id), count)


def test_leading_zero_string_is_a_different_user() -> None:
    """Breaks if strings are normalised as numbers ("042" is not user 42)."""
    assert canonical_user_id("042") == "042"
    assert key_hash("042") != key_hash(42)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8, 15, 31])
def test_growing_n_moves_only_users_onto_the_new_shard(n: int) -> None:
    """Breaks with any non-consistent mapping (e.g. key % n moves n/(n+1) of the users, and
    moves them between old shards)."""
    ids = [f"user-{i}" for i in range(10_000)] + list(range(10_000))
    moved = 0
    for user in ids:
        before, after = shard_for(user, n), shard_for(user, n + 1)
        if before != after:
            assert after == n, (user, before, after)
            moved += 1
    fraction = moved / len(ids)
    # Binomial sd over 20000 ids is below 0.0036; 0.015 is over 4 sd.
    assert abs(fraction - 1 / (n + 1)) < 0.015, (n, fraction)


def test_users_spread_over_all_shards() -> None:
    """Breaks if the mapping collapses (e.g. a key truncated to a few bits)."""
    counts = [0] * 8
    for i in range(8000):
        counts[shard_for(i, 8)] += 1
    assert min(counts) > 800 and max(counts) < 1200, counts


# ---- canonical user ids ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        (True, "True"),
        (False, "False"),
        (None, "None"),
        (1.0, "1.0"),
        (-1, "-1"),
        ("", "''"),
        ("z" * 257, "zzzzzzzz"),
        ([42], "[42]"),
    ],
)
def test_invalid_user_ids_are_refused_with_their_value(bad: object, named: str) -> None:
    """Breaks if an unroutable id is accepted (True would silently become user "1", 1.0 user
    "1.0") or if the error stops saying what was wrong."""
    with pytest.raises(InvalidUserId) as info:
        shard_for(bad, 4)
    assert isinstance(info.value, ValueError)
    assert named in str(info.value)
    if isinstance(bad, str) and bad:
        assert "257" in str(info.value)


@pytest.mark.parametrize("good", [0, 2**100, "a" * 256, "Zoë-日本-🙂", "042", " "])
def test_valid_user_ids_route(good: int | str) -> None:
    """Breaks if the accepted range shrinks: 0, huge ints, 256 chars, any Unicode."""
    assert 0 <= shard_for(good, 16) < 16
    assert canonical_user_id(good) == str(good)


# ---- the router -----------------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(ORDERED_TASKS))
def test_router_sends_ordered_tasks_to_the_users_shard(task: str) -> None:
    """Breaks if an ordered task is routed anywhere but shard_for(user)'s queue, positional
    or keyword user id alike."""
    router = ShardRouter(8)
    for user in (0, 42, "42", "alice", 2**64):
        expected = {"queue": shard_queue(shard_for(user, 8))}
        assert router(task, (user, "hi"), {}, {}) == expected
        assert router(task, (), {"user_id": user, "text": "hi"}, {}) == expected
        assert expected["queue"].startswith(SHARD_QUEUE_PREFIX)


def test_router_shard_count_may_be_a_callable() -> None:
    """Breaks if a callable shard count is not re-read on each call (a live resize)."""
    count = [1]
    router = ShardRouter(lambda: count[0])
    assert router(SEND_AI_RESPONSE, (7, "x"), {}, {}) == {"queue": "shard.0"}
    count[0] = 64
    assert router(SEND_AI_RESPONSE, (7, "x"), {}, {}) == {"queue": queue_for(7, 64)}


@pytest.mark.parametrize(("prefix", "queue"), WORKLOAD_ROUTES)
def test_router_sends_workload_tasks_to_their_queues(prefix: str, queue: str) -> None:
    """Breaks if workload tasks land on a shard (they would block users' conversations)."""
    assert ShardRouter(4)(prefix + "some_job", (1, 2), {}, {}) == {"queue": queue}


def test_router_leaves_unknown_tasks_to_celery() -> None:
    """Breaks if unknown tasks are captured (they should fall to task_default_queue)."""
    assert ShardRouter(4)("someone.else.task", (42,), {}, {}) is None
    assert ShardRouter(4)("celery.ping", None, None, {}) is None


def test_router_refuses_an_explicit_other_queue_for_an_ordered_task() -> None:
    """Breaks if queue= can bypass the shard (Celery lets an explicit queue override the
    router's answer, which would split a user's messages over two queues)."""
    router = ShardRouter(4)
    own = queue_for(42, 4)
    other = next(shard_queue(s) for s in range(4) if shard_queue(s) != own)
    for explicit in (other, Queue(other), "default"):
        with pytest.raises(InvalidDispatch, match="per-user order"):
            router(SEND_AI_RESPONSE, (42, "x"), {}, {"queue": explicit})
    # Naming the user's own queue is harmless.
    assert router(SEND_AI_RESPONSE, (42, "x"), {}, {"queue": own}) == {"queue": own}
    assert router(SEND_AI_RESPONSE, (42, "x"), {}, {"queue": Queue(own)}) == {"queue": own}


def test_router_refuses_a_priority_on_an_ordered_task() -> None:
    """Breaks if a priority is let through (kombu keeps one Redis list per priority step and
    reads them priority-major, so a prioritised message overtakes earlier ones)."""
    router = ShardRouter(4)
    for priority in (0, 5, 9):
        with pytest.raises(InvalidDispatch, match="priority"):
            router(SEND_AI_RESPONSE, (42, "x"), {}, {"priority": priority})
    assert router(SEND_AI_RESPONSE, (42, "x"), {}, {"priority": None}) == {
        "queue": queue_for(42, 4)
    }


def test_router_refuses_a_missing_user_id() -> None:
    """Breaks if an ordered task without a user id is routed somewhere arbitrary."""
    with pytest.raises(InvalidUserId):
        ShardRouter(4)(SEND_AI_RESPONSE, (), {}, {})


def test_send_task_with_bad_user_id_publishes_nothing(producer, rclient) -> None:  # type: ignore[no-untyped-def]
    """Breaks if the router's check runs after publishing (or not at all on the producer's
    send path): True would be published and answered as user "1"."""
    rclient.config_resetstat()
    with pytest.raises(InvalidUserId, match="True"):
        producer.send_task(SEND_AI_RESPONSE, args=(True, "x"))
    with pytest.raises(InvalidUserId):
        producer.send_task(SEND_AI_RESPONSE, kwargs={"user_id": -5, "text": "x"})
    assert rclient.keys(f"{SHARD_QUEUE_PREFIX}*") == []
    assert rclient.info("commandstats").get("cmdstat_lpush") is None
    # The control: a valid id does reach its shard list on the same producer.
    producer.send_task(SEND_AI_RESPONSE, args=(42, "x"))
    assert rclient.llen(queue_for(42)) == 1

