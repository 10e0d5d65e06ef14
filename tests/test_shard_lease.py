"""Exactly one consumer per shard: the shard lease, its standby and its loss."""

from __future__ import annotations

import socket
import time

from cli.chatload import check_order
from deploy.shards import shard_worker_argv
from routing import ChatMessage, keys, send, shard_for
from services.lease import ShardLease
from tasks.shard_lease import EXIT_LEASE_LOST
from tests.harness import wait_until

LEASE = keys.shard_lease(0)


def _user_on(shard: int) -> int:
    return next(u for u in range(1000) if shard_for(u, 4) == shard)


def _workers_that_answered(rclient, user: int) -> set[str]:  # type: ignore[no-untyped-def]
    return {f["worker"].rsplit(":", 1)[1] for _, f in rclient.xrange(keys.outbox(str(user)))}


def _holder_pid(rclient) -> str | None:  # type: ignore[no-untyped-def]
    holder = rclient.hget(LEASE, "holder")
    return holder.rsplit(":", 1)[1] if holder else None


def test_lease_is_compare_and_set(rclient):
    """Breaks if a second claimant can take a live lease, renew or release someone else's,
    if the fence does not grow on each acquisition, or a dead local holder blocks forever."""
    first = ShardLease(rclient, 0, ttl_s=10)
    second = ShardLease(rclient, 0, ttl_s=10)
    fence = first.acquire()
    assert fence is not None
    assert second.acquire() is None
    assert not second.renew() and not second.release()
    assert first.renew() and first.acquire() == fence  # re-acquiring its own lease: same fence
    assert first.release()
    assert second.acquire() == fence + 1

    # A holder process of this host that no longer runs is broken at once, with a new fence.
    rclient.hset(LEASE, "holder", f"{socket.gethostname()}:999999999")
    third = ShardLease(rclient, 0, ttl_s=10)
    assert third.acquire() == fence + 2
    assert not second.renew()


def test_standby_consumes_nothing_then_takes_over(producer, workers, rclient):
    """Breaks if a second worker on the same shard consumes while the owner lives (the
    bootstep not blocking before the event loop: replies from two pids), or if it does not
    take over after kill -9 of the owner (the hang guard fails)."""
    user = _user_on(0)
    workers.env["AI_LATENCY_MS"] = "100"
    owner = workers.start_shard(0)
    wait_until(lambda: _holder_pid(rclient) == str(owner.pid), 60, what="owner holds the lease")
    standby = workers.start("standby-0", shard_worker_argv(0))
    wait_until(lambda: "standby for shard.0" in workers.log("standby-0"), 60,
               what="the second worker waiting as a standby")

    for seq in range(10):
        send(producer, ChatMessage(user, f"message {seq}", extra={"seq": seq}))
    wait_until(lambda: rclient.xlen(keys.outbox(str(user))) >= 10, 60, what="10 replies")
    assert _workers_that_answered(rclient, user) == {str(owner.pid)}
    assert "Task shardline" not in workers.log("standby-0")

    workers.kill("shard-0")
    killed = time.monotonic()
    wait_until(lambda: _holder_pid(rclient) == str(standby.pid), 60, what="standby takes over")
    print(f"\nstandby holds the lease {time.monotonic() - killed:.2f}s after kill -9 of the owner")
    for seq in range(10, 20):
        send(producer, ChatMessage(user, f"message {seq}", extra={"seq": seq}))
    wait_until(lambda: rclient.xlen(keys.outbox(str(user))) >= 20, 60, what="20 replies")
    assert _workers_that_answered(rclient, user) == {str(owner.pid), str(standby.pid)}
    assert check_order(rclient, {str(user): 20}).ok


def test_worker_whose_lease_is_stolen_stops_before_it_expires(producer, workers, rclient):
    """Breaks if a worker that finds its lease owned by someone else keeps consuming, or
    exits only after the lease could have passed to another worker (the key must still be the
    intruder's when the worker is gone), or if its replacement does not wait as a standby."""
    user = _user_on(0)
    workers.env["SHARD_LEASE_TTL_S"] = "6"
    owner = workers.start_shard(0)
    wait_until(lambda: _holder_pid(rclient) == str(owner.pid), 60, what="owner holds the lease")

    # Another host's worker "takes" the lease (what a Redis failover or a long pause can do).
    rclient.hset(LEASE, mapping={"owner": "intruder", "holder": "elsewhere:1"})
    rclient.pexpire(LEASE, 6000)
    stolen = time.monotonic()
    wait_until(lambda: owner.poll() is not None, 60, what="the worker to stop")
    gone_s = time.monotonic() - stolen
    assert rclient.hget(LEASE, "owner") == "intruder" and rclient.pttl(LEASE) > 0
    assert owner.returncode == EXIT_LEASE_LOST
    assert "LEASE LOST" in workers.log("shard-0")
    print(f"\nworker exited {gone_s:.2f}s after its lease was taken (TTL 6s)")

    send(producer, ChatMessage(user, "after the theft", extra={"seq": 0}))
    replacement = workers.start_shard(0)
    wait_until(lambda: "lease held by elsewhere:1" in workers.log("shard-0"), 60,
               what="the replacement waiting as a standby")
    assert rclient.xlen(keys.outbox(str(user))) == 0
    wait_until(lambda: rclient.xlen(keys.outbox(str(user))) == 1, 60,
               what="the replacement answering after the intruder's lease expired")
    assert _workers_that_answered(rclient, user) == {str(replacement.pid)}
