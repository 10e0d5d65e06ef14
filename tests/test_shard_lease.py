"""Exactly one consumer per shard: the shard lease, its standby and its loss.

The tests with a consumer run against every shard runtime (``tests.harness.RUNTIMES``: a
solo worker, a shard host with K=1 and with K=4); where the runtimes differ (a solo worker
that loses its lease exits, a host gives that one shard up and keeps running) the harness
says so (``WorkerSet.wait_standing_by``, ``WorkerSet.wait_lease_lost``). Solo-only:
``test_take_after_a_long_pause_exits_instead`` pins the solo worker's pre-take freshness check
(``solo_lease.ensure_lease_fresh``), which a host does not have: its take is conditional on the
lease in Redis itself (the take window, ``tests/test_shard_hosts.py``). The lease's
compare-and-set and the commit fence involve no consumer.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from cli.chatload import check_order
from deploy.launcher import PROJECT_DIR
from routing import ChatMessage, keys, send, shard_for
from services.ai.base import Turn
from services.conversation import ConversationStore, Fence, Fenced
from shardhost.lease import ShardLease
from shardhost.solo_lease import EXIT_LEASE_LOST
from tests.harness import RUNTIMES, wait_until

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


@pytest.mark.parametrize("workers", RUNTIMES, indirect=True)
def test_standby_consumes_nothing_then_takes_over(producer, workers, rclient):
    """Breaks if a second worker on the same shard consumes while the owner lives (the
    bootstep not blocking before the event loop, or a host taking without the lease: replies
    from two pids), or if it does not take over after kill -9 of the owner (the hang guard
    fails)."""
    user = _user_on(0)
    workers.env["AI_LATENCY_MS"] = "100"
    owner = workers.start_shard(0)
    wait_until(lambda: _holder_pid(rclient) == str(owner.pid), 60, what="owner holds the lease")
    standby = workers.start_shard(0, "standby-0")
    workers.wait_standing_by("standby-0", 0)

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


@pytest.mark.parametrize("workers", RUNTIMES, indirect=True)
def test_worker_whose_lease_is_stolen_stops_before_it_expires(producer, workers, rclient):
    """Breaks if a worker that finds its lease owned by someone else keeps consuming, or
    gives the shard up only after the lease could have passed to another worker (the key must
    still be the intruder's when the worker is gone, or when a host logs LEASE LOST for it),
    or if its replacement does not wait as a standby."""
    user = _user_on(0)
    workers.env["SHARD_LEASE_TTL_S"] = "6"
    owner = workers.start_shard(0)
    wait_until(lambda: _holder_pid(rclient) == str(owner.pid), 60, what="owner holds the lease")

    # Another host's worker "takes" the lease (what a Redis failover or a long pause can do).
    rclient.hset(LEASE, mapping={"owner": "intruder", "holder": "elsewhere:1"})
    rclient.pexpire(LEASE, 6000)
    stolen = time.monotonic()
    workers.wait_lease_lost("shard-0", 0)
    gone_s = time.monotonic() - stolen
    assert rclient.hget(LEASE, "owner") == "intruder" and rclient.pttl(LEASE) > 0
    print(f"\nworker gave the shard up {gone_s:.2f}s after its lease was taken (TTL 6s)")
    if workers.runtime != "solo":
        workers.kill("shard-0")  # the host would stand by for the shard: the replacement's role

    # The intruder keeps its lease until the replacement is seen waiting (however long the
    # replacement takes to start), then lets it expire.
    rclient.pexpire(LEASE, 300_000)
    send(producer, ChatMessage(user, "after the theft", extra={"seq": 0}))
    replacement = workers.start_shard(0, "replacement-0")
    workers.wait_standing_by("replacement-0", 0, holder="elsewhere:1")
    assert rclient.xlen(keys.outbox(str(user))) == 0
    rclient.pexpire(LEASE, 200)
    wait_until(lambda: rclient.xlen(keys.outbox(str(user))) == 1, 60,
               what="the replacement answering after the intruder's lease expired")
    assert _workers_that_answered(rclient, user) == {str(replacement.pid)}


def test_commit_is_fenced_by_the_lease(rclient):
    """Breaks if a reply commit fenced with a lease the worker no longer owns writes anything
    (a worker paused past its lease would deliver a stale reply after the next owner moved
    on, e.g. after that owner dead-lettered the same message and answered the next one)."""
    store = ConversationStore(rclient, history_limit=10, done_ttl_s=60)
    lease = ShardLease(rclient, 0, ttl_s=10)
    assert lease.acquire() is not None
    turns: list[Turn] = [{"role": "assistant", "text": "hello"}]
    stale = Fence(lease.key, "a token from before the pause")
    with pytest.raises(Fenced):
        store.commit("7", "task-1", turns, {"kind": "reply"}, fence=stale)
    assert rclient.xlen(keys.outbox("7")) == 0 and not rclient.exists(keys.done("task-1"))
    assert store.commit("7", "task-1", turns, {"kind": "reply"},
                        fence=Fence(lease.key, lease.token)) is not None
    assert rclient.xlen(keys.outbox("7")) == 1


_RESUMED_AFTER_PAUSE = """
import sys, time, redis
import shardhost.solo_lease as sl
from shardhost.lease import ShardLease
lease = ShardLease(redis.Redis.from_url(sys.argv[1]), 0, ttl_s=3)
keeper = sl.LeaseKeeper(lease, "shard.0")
sl._keeper = keeper
sl.ensure_lease_fresh()          # fresh: returns
keeper.last_sent_ok = time.monotonic() - 2.0   # as after a 2 s pause (give-up is 1.8 s)
sl.ensure_lease_fresh()          # must end the process with EXIT_LEASE_LOST
print("took a message after the pause")
"""


def test_take_after_a_long_pause_exits_instead(redis_url):
    """Breaks if a shard worker whose last lease renewal is older than 0.6 x TTL (a process
    resumed after SIGSTOP or a VM freeze) may still take a message: another worker may hold
    the lease by then, and two consumers break the shard's order."""
    run = subprocess.run([sys.executable, "-c", _RESUMED_AFTER_PAUSE, redis_url],
                         cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60)
    assert run.returncode == EXIT_LEASE_LOST, run.stdout + run.stderr
    assert "took a message" not in run.stdout
    assert "LEASE LOST" in run.stderr


@pytest.mark.parametrize("workers", RUNTIMES, indirect=True)
def test_worker_paused_past_its_lease_writes_nothing_after_resume(producer, workers, rclient):
    """A worker is frozen (SIGSTOP) mid-task, a standby takes the shard and answers
    everything, then the frozen one resumes. Breaks if the resumed worker writes a reply or
    takes a message (every reply must come from the standby, in order, once) or keeps
    consuming (a solo worker must exit with EXIT_LEASE_LOST; a host must give the shard up:
    a host's fenced commit raising anything but LeaseLost would be retried in place). Which
    guard stops it (the heartbeat or the keeper's renewal, the fenced commit, the pre-take
    check or the conditional take) is a race; the tests above and the take-window test of
    tests/test_shard_hosts.py pin them."""
    user = _user_on(0)
    # The frozen worker's task outlasts any delay before the SIGSTOP; the standby is fast.
    # Neither uses the minimum TTL (3 s), whose 1.8 s give-up can end a healthy worker.
    workers.env.update(SHARD_LEASE_TTL_S="6", AI_LATENCY_MS="10000")
    frozen = workers.start_shard(0)
    wait_until(lambda: _holder_pid(rclient) == str(frozen.pid), 60, what="first owner")
    for seq in range(5):
        send(producer, ChatMessage(user, f"message {seq}", extra={"seq": seq}))
    wait_until(lambda: rclient.llen(keys.inflight("shard.0")) == 1, 60, what="a message taken")
    os.killpg(frozen.pid, signal.SIGSTOP)
    try:
        workers.env.update(SHARD_LEASE_TTL_S="10", AI_LATENCY_MS="100")
        standby = workers.start_shard(0, "standby-0")
        wait_until(lambda: rclient.xlen(keys.outbox(str(user))) >= 1, 60,
                   what="the standby answering the frozen worker's message")
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
    workers.wait_lease_lost("shard-0", 0)
    wait_until(lambda: rclient.xlen(keys.outbox(str(user))) >= 5, 60, what="all replies")
    report = check_order(rclient, {str(user): 5})
    assert (report.answered, report.missing, report.duplicated, report.violations) == (
        5, 0, 0, 0)
    assert _workers_that_answered(rclient, user) == {str(standby.pid)}
