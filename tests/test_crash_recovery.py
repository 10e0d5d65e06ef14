"""Crash recovery: a shard worker killed mid-task loses nothing and breaks no order.

The restarted (or standby) worker puts the shard's stranded message back at the head of the
queue before it consumes, so it runs before the user's later messages, seconds after the
replacement starts instead of after the visibility timeout.

The tests with a consumer run against every shard runtime (``tests.harness.RUNTIMES``); the
restore itself (``shardhost.stranded``) is one function every runtime calls before it consumes,
tested here without a consumer. A host with K messages in flight at a kill -9 is
``tests/test_shard_hosts.py``.
"""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest
import redis

from cli.chatload import check_order, delivered_count
from deploy.launcher import wait_for_workers
from routing import ChatMessage, keys, send, shard_for
from shardhost.lease import ShardLease
from shardhost.stranded import LeaseNotHeld, restore_stranded
from tests.harness import RUNTIMES, wait_until

MESSAGES = 8


def _user_on(shard: int) -> int:
    return next(u for u in range(1000) if shard_for(u, 4) == shard)


def _answered(rclient, user: int) -> list[int]:  # type: ignore[no-untyped-def]
    return [int(f["seq"]) for _, f in rclient.xrange(keys.outbox(str(user)))]


def _stranded_on(rclient, queue: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Task ids of the messages taken from ``queue`` and not acked: its in-flight list (a
    shard worker keeps no kombu ``unacked`` record for them)."""
    return [json.loads(raw)["headers"]["id"]
            for raw in rclient.lrange(keys.inflight(queue), 0, -1)]


def _freeze(pid: int) -> None:
    """SIGSTOP the worker's process group and wait until the kernel reports it stopped."""
    os.killpg(pid, signal.SIGSTOP)
    wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, 30,
               interval_s=0.01, what=f"worker {pid} stopped")


@pytest.mark.parametrize("workers", RUNTIMES, indirect=True)
def test_kill_9_mid_task_recovers_in_order(producer, workers, rclient):
    """Breaks if the replacement does not restore the stranded message before consuming (it
    would wait for the 7200 s visibility timeout: the hang guard fails, or the user's later
    messages run first and check_order counts a violation), if it restores to the tail
    (LPUSH), or if the redelivered message is answered twice."""
    user = _user_on(0)
    workers.env["AI_LATENCY_MS"] = "1000"
    worker = workers.start_shard(0)
    seq_of = {}
    for seq in range(MESSAGES):
        sent = send(producer, ChatMessage(user, f"message {seq}", extra={"seq": seq}))
        seq_of[sent.task_id] = seq
    wait_until(lambda: _answered(rclient, user) == [0] and _stranded_on(rclient, "shard.0"),
               60, what="message 1 in flight on shard 0")
    # Freeze the worker before looking, so the kill lands on what was seen: a message taken
    # and not yet answered. Between an ack and the next take the list is briefly empty (and
    # just after a reply it still holds the answered message): then let it run and look again.
    while True:
        _freeze(worker.pid)
        stranded = _stranded_on(rclient, "shard.0")
        answered = _answered(rclient, user)
        if len(stranded) == 1 and seq_of[stranded[0]] not in answered:
            workers.kill("shard-0")  # SIGKILL while stopped
            break
        os.killpg(worker.pid, signal.SIGCONT)
        assert len(answered) < MESSAGES, f"no message left to kill the worker in: {answered}"
        wait_until(lambda: _stranded_on(rclient, "shard.0"), 60, interval_s=0.01,
                   what="the next message in flight on shard 0")
    assert len(_stranded_on(rclient, "shard.0")) == 1
    stranded_seq = seq_of[stranded[0]]

    started = time.monotonic()
    workers.start_shard(0)
    wait_until(lambda: stranded_seq in _answered(rclient, user), 60,
               what=f"the stranded message {stranded_seq} answered")
    recovery_s = time.monotonic() - started
    print(f"\nstranded message answered {recovery_s:.2f}s after the replacement started "
          f"(includes its 1.0s AI latency)")

    wait_until(lambda: delivered_count(rclient) >= MESSAGES, 60, what="all replies")
    report = check_order(rclient, {str(user): MESSAGES})
    assert (report.answered, report.missing, report.duplicated, report.violations) == (
        MESSAGES, 0, 0, 0), _answered(rclient, user)
    # The last reply is committed a moment before its ack (the LREM) runs.
    wait_until(lambda: not _stranded_on(rclient, "shard.0"), 60,
               what="the acks emptying the in-flight list")
    assert not rclient.exists(keys.KOMBU_UNACKED), "shard messages need no unacked record"
    assert "restored stranded message" in workers.log("shard-0")


@pytest.mark.parametrize("workers", RUNTIMES, indirect=True)
def test_message_taken_but_never_recorded_is_restored(producer, workers, rclient):
    """The loss window of kombu's BRPOP: the worker took the message and died before it wrote
    the ``unacked`` record. Here the take is done by hand with the worker's own command
    (BLMOVE into the in-flight list) and no ``unacked`` record is written. Breaks if the lease
    owner does not restore the in-flight list (message 0 is missing), restores it to the tail
    (message 0 runs last: a violation), or if the ack leaves it in the list."""
    user = _user_on(0)
    for seq in range(MESSAGES):
        send(producer, ChatMessage(user, f"message {seq}", extra={"seq": seq}))
    taken = rclient.blmove("shard.0", keys.inflight("shard.0"), 1, "RIGHT", "LEFT")
    assert json.loads(taken)["headers"]["id"], "the oldest message was taken"

    workers.start_shard(0)
    wait_until(lambda: delivered_count(rclient) >= MESSAGES, 60, what="all replies")
    report = check_order(rclient, {str(user): MESSAGES})
    assert (report.answered, report.missing, report.duplicated, report.violations) == (
        MESSAGES, 0, 0, 0), _answered(rclient, user)
    assert _answered(rclient, user) == list(range(MESSAGES))
    # The last reply is committed a moment before its ack (the LREM) runs.
    wait_until(lambda: rclient.llen(keys.inflight("shard.0")) == 0, 60,
               what="the acks emptying the in-flight list")


def _fake_unacked(rclient, tag: str, queue: str, seq: int, at: float) -> None:  # type: ignore[no-untyped-def]
    message = {"body": "", "headers": {"id": f"task-{seq}"},
               "properties": {"delivery_info": {"exchange": "", "routing_key": queue}}}
    rclient.hset(keys.KOMBU_UNACKED, tag, json.dumps([message, "", queue]))
    rclient.zadd(keys.KOMBU_UNACKED_INDEX, {tag: at})


def test_restore_puts_several_stranded_back_oldest_first(rclient):
    """Breaks if several stranded messages come back in the wrong order (the oldest must be
    read first by BRPOP), if another shard's message is moved, if a message is not marked
    redelivered, or if a worker without the lease may restore."""
    for seq, at in ((2, 300.0), (0, 100.0), (1, 200.0)):
        _fake_unacked(rclient, f"tag-{seq}", "shard.0", seq, at)
    _fake_unacked(rclient, "other", "shard.1", 9, 50.0)

    outsider = ShardLease(rclient, 0, ttl_s=10)
    owner = ShardLease(rclient, 0, ttl_s=10)
    assert owner.acquire() is not None
    try:
        restore_stranded(rclient, "shard.0", lease_key=outsider.key,
                         lease_token=outsider.token)
        raise AssertionError("restored without holding the lease")
    except LeaseNotHeld:
        pass
    restored = restore_stranded(rclient, "shard.0", lease_key=owner.key, lease_token=owner.token)
    assert [s.task_id for s in restored] == ["task-0", "task-1", "task-2"]

    consumed = []
    while (item := rclient.brpop(["shard.0"], timeout=1)) is not None:
        consumed.append(json.loads(item[1]))
    assert [m["headers"]["id"] for m in consumed] == ["task-0", "task-1", "task-2"]
    assert all(m["headers"]["redelivered"] for m in consumed)
    assert all(m["properties"]["delivery_info"]["redelivered"] for m in consumed)
    assert list(rclient.hgetall(keys.KOMBU_UNACKED)) == ["other"]
    assert rclient.zrange(keys.KOMBU_UNACKED_INDEX, 0, -1) == ["other"]


def test_restore_in_flight_list_oldest_first_and_once(rclient, redis_url):
    """Breaks if the in-flight list comes back in the wrong order, if a message that is both in
    flight and in ``unacked`` is pushed twice, or if a raw item that is not UTF-8 (a poison
    item taken just before a crash) stops the restore instead of going back unchanged."""
    queue, inflight = "shard.0", keys.inflight("shard.0")
    poison = b"\xff\xfe not an envelope"
    raw = redis.Redis.from_url(redis_url)
    for seq in range(3):  # taken in order 0, 1, 2: LPUSH-side, so index 0 is the newest
        message = {"body": "", "headers": {"id": f"task-{seq}"},
                   "properties": {"delivery_tag": f"tag-{seq}",
                                  "delivery_info": {"exchange": "", "routing_key": queue}}}
        raw.lpush(inflight, json.dumps(message))
        if seq == 1:
            raw.lpush(inflight, poison)
    _fake_unacked(rclient, "tag-2", queue, 2, 100.0)  # recorded in unacked too

    owner = ShardLease(rclient, 0, ttl_s=10)
    assert owner.acquire() is not None
    restored = restore_stranded(rclient, queue, lease_key=owner.key, lease_token=owner.token)
    assert [s.task_id for s in restored] == ["task-0", "task-1", None, "task-2"]

    consumed = []
    while (item := raw.brpop([queue], timeout=1)) is not None:
        consumed.append(item[1])
    assert consumed[2] == poison
    ids = [json.loads(c)["headers"]["id"] for i, c in enumerate(consumed) if i != 2]
    assert ids == ["task-0", "task-1", "task-2"]
    assert raw.llen(inflight) == 0
    assert not rclient.hgetall(keys.KOMBU_UNACKED)



@pytest.mark.parametrize("workers", RUNTIMES, indirect=True)
def test_take_during_warm_shutdown_goes_back_to_the_head(producer, workers, rclient):
    """A SIGTERM (supervisor restart, ``supervisorctl update``) can land while the worker's
    take is pending: the take then returns a message after the consumer was cancelled. Breaks
    if that message is requeued at the tail (kombu's own path: "Requeuing undeliverable
    message ... No consumers", seen in about one restart in three here) instead of back at the
    head: the user's next message then runs first and check_order counts a violation."""
    user = _user_on(0)
    rounds = 6
    for seq in range(2 * rounds):  # built with no worker running, taken back off the queue
        send(producer, ChatMessage(user, f"message {seq}", extra={"seq": seq}))
    built = [rclient.rpop("shard.0") for _ in range(2 * rounds)]
    for n in range(rounds):
        worker = workers.start_shard(0)
        wait_for_workers(producer, ["shard.0"])
        time.sleep(0.5)  # consuming: a take is pending
        worker.send_signal(signal.SIGTERM)
        time.sleep(0.1 + 0.04 * n)  # land the push at different points of the shutdown
        rclient.lpush("shard.0", built[2 * n], built[2 * n + 1])  # oldest at the head
        worker.wait(60)
        workers.procs.pop("shard-0")
    workers.start_shard(0)
    wait_until(lambda: delivered_count(rclient) >= 2 * rounds, 60, what="all replies")
    report = check_order(rclient, {str(user): 2 * rounds})
    assert (report.answered, report.missing, report.duplicated, report.violations) == (
        2 * rounds, 0, 0, 0), _answered(rclient, user)
