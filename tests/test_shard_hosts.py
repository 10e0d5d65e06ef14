"""Shard hosts (``shardhost.host``): what only a process that hosts many shards, and runs up to
K messages of one shard at once, can get wrong.

Real parts only: a private Redis, shard hosts as real ``celery worker -Q shard-hosts``
processes (``WorkerSet.start_host``), kill -9, SIGSTOP and lease thefts done to them from
outside. The take-window test runs against every shard runtime (``tests.harness.RUNTIMES``):
a solo worker's take is the same conditional Lua take. Each test's docstring says which
breaking change makes it fail.

Which components of the worker registry (``services.registry``) a host's threads share, and
why that is safe:

* the Redis client (``redis.Redis``): a connection pool; each command borrows a connection;
* the AI handler: the breaker (``services.breaker``) keeps its state in Redis; the offline
  responder keeps none; the OpenAI-compatible one calls through one ``httpx.Client``, whose
  connection pool is thread-safe;
* the conversation store, dead letters, holds, the drain barrier, the sequence check: each is
  a Redis client plus registered Lua scripts; every change is one atomic script or
  pipeline, keyed by user (and a user never runs on two threads at once); the barrier's one
  piece of memory (the epoch counts) is behind a lock;
* the metrics recorder (``tasks.instrumentation``): per-task state in dicts keyed by task id
  (one GIL-atomic operation each), the figures not yet written behind a lock, counts in
  Redis; the process's one recorder is built under a lock (it was not: threads starting
  their first tasks at once could each build one).

``test_registry_is_built_once_and_shared_by_a_hosts_threads`` runs them all at once.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from typing import Any

import psutil
import pytest
import redis

import celeryconfig
from cli.chatload import check_order, delivered_count
from routing import ChatMessage, keys, send, shard_for
from routing.envelope import USER_HEADER
from routing.queues import SEND_AI_RESPONSE, shard_queue
from services.registry import start_services, stop_services
from shardhost.launcher import host_worker_argv
from shardhost.lease import ShardLease
from shardhost.slot import HostedShard
from tests.handlers import GATE_PREFIX
from tests.harness import RUNTIMES, WorkerSet, wait_until

SHARDS = 4  # the fixtures' SHARD_COUNT
#: The registry's components (``services.registry.COMPONENTS``).
COMPONENTS = {"redis", "ai", "conversations", "dead_letters", "holds", "barriers", "sequence"}


def _users_on(shard: int, count: int, prefix: str = "u") -> list[str]:
    found: list[str] = []
    n = 0
    while len(found) < count:
        if shard_for(f"{prefix}{n}", SHARDS) == shard:
            found.append(f"{prefix}{n}")
        n += 1
    return found


def _holder_pid(client: redis.Redis, shard: int) -> int | None:
    holder = client.hget(keys.shard_lease(shard), "holder")
    return int(str(holder).rpartition(":")[2]) if holder else None


def _inflight(client: redis.Redis, shard: int) -> list[dict[str, Any]]:
    """The envelopes in ``shard``'s in-flight list, newest take first."""
    return [json.loads(raw) for raw in client.lrange(keys.inflight(shard_queue(shard)), 0, -1)]


def _task_id(envelope: dict[str, Any]) -> str:
    return str(envelope["headers"]["id"])


def _user(envelope: dict[str, Any]) -> str:
    return str(envelope["headers"][USER_HEADER])


def _replies(client: redis.Redis, user: str) -> list[dict[str, str]]:
    return [fields for _, fields in client.xrange(keys.outbox(user))]


def _pid(reply: dict[str, str]) -> int:
    return int(reply["worker"].rpartition(":")[2])


def _seqs(client: redis.Redis, user: str) -> list[int]:
    return [int(r["seq"]) for r in _replies(client, user)]


def _freeze(pid: int) -> None:
    """SIGSTOP the process group and wait until the kernel reports the leader stopped."""
    os.killpg(pid, signal.SIGSTOP)
    wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, 30,
               interval_s=0.005, what=f"process {pid} stopped")


def _no_errors(workers: WorkerSet, name: str) -> None:
    log = workers.log(name)
    assert "Traceback" not in log and "ERROR/" not in log, log[-3000:]


# ---- a host killed with K messages in flight ------------------------------------------------

K = 4


def test_kill_9_of_a_host_restores_its_k_messages_in_queue_order(producer, workers, rclient):
    """A host with K=4 runs the first messages of 4 users of one shard (held at a gate, so
    they are surely in flight: the in-flight list holds all 4) and is killed with kill -9. A
    replacement (K=1, so it takes exactly the head) restores them. Breaks if the restore
    loses one, puts them back in the wrong order (e.g. restore_stranded pushing the in-flight
    list oldest first, or take.lua filling it in another order than it took: the replacement
    would take another user's message first, or a user's later one), puts them at the tail,
    or if a message is answered twice or out of its user's order."""
    users = _users_on(0, K)
    workers.env.update(AI_HANDLER="tests.handlers:gated")
    gate = "test:gate:kill"
    sent = []  # task ids, in queue order: one producer, one message after another
    for seq in range(3):
        for user in users:
            text = f"{GATE_PREFIX}{gate}" if seq == 0 else f"{user} #{seq}"
            sent.append(send(producer, ChatMessage(user, text, extra={"seq": seq})).task_id)
    workers.start_host("host", "0", K)
    wait_until(lambda: len(_inflight(rclient, 0)) == K, 60, what=f"{K} messages in flight")
    inflight = _inflight(rclient, 0)
    assert sorted(_user(e) for e in inflight) == sorted(users)
    assert [_task_id(e) for e in reversed(inflight)] == sent[:K], "taken oldest first"
    workers.kill("host")
    assert delivered_count(rclient) == 0

    replacement = workers.start_host("replacement", "0", 1)
    wait_until(lambda: f"restored {K} stranded message(s)" in workers.log("replacement")
               and len(_inflight(rclient, 0)) == 1, 60,
               what="the replacement restoring and taking the head")
    assert _holder_pid(rclient, 0) == replacement.pid
    # It waits at the gate with the head; the rest of the queue is as it was, head first.
    [taken] = _inflight(rclient, 0)
    queued = [_task_id(json.loads(raw)) for raw in reversed(rclient.lrange("shard.0", 0, -1))]
    assert [_task_id(taken), *queued] == sent
    assert taken["headers"]["redelivered"] is True

    rclient.set(gate, "open")
    wait_until(lambda: delivered_count(rclient) >= len(sent), 60, what="every reply")
    report = check_order(rclient, dict.fromkeys(users, 3))
    assert (report.answered, report.missing, report.duplicated, report.violations) == (
        len(sent), 0, 0, 0), report.bad_users
    assert {_pid(r) for u in users for r in _replies(rclient, u)} == {replacement.pid}
    wait_until(lambda: not _inflight(rclient, 0), 60, what="the acks emptying the list")


# ---- one shard's lease lost, the others kept ---------------------------------------------


def test_a_host_losing_one_shards_lease_keeps_its_others(producer, workers, rclient):
    """A host of shards 0 and 1 runs a message of shard 0 (held at a gate) when shard 0's
    lease passes to another owner. Breaks if the host exits or stops consuming shard 1
    (a lost lease must cost it that one shard), if it keeps taking from shard 0, if it takes
    shard 0 back while its abandoned run still goes (the standby host must get it), if the
    abandoned run's reply is written (e.g. a host's run not fenced on its own lease: it
    commits before the slow second host, and the reply comes from a host that no longer owns
    the shard), or if the host
    does not stand by for shard 0 again once its run has ended (the hang guard after the
    standby's kill -9 fails)."""
    workers.env.update(AI_HANDLER="tests.handlers:gated", SHARD_LEASE_TTL_S="6")
    [lost_user], [kept_user] = _users_on(0, 1), _users_on(1, 1)
    first = workers.start_host("first", "0-1", 2)
    wait_until(lambda: _holder_pid(rclient, 0) == _holder_pid(rclient, 1) == first.pid, 60,
               what="the first host holding shards 0 and 1")
    # The second host answers slowly, so the first host's abandoned run (below) tries to
    # commit first: only its fence stops it.
    second = workers.start("second", host_worker_argv(0), SHARD_RANGE="0",
                           SHARD_CONCURRENCY="2", AI_LATENCY_MS="1500")
    wait_until(lambda: "hosting shards [0]" in workers.log("second"), 60,
               what="the second host standing by for shard 0")
    gate = "test:gate:lost"
    send(producer, ChatMessage(lost_user, f"{GATE_PREFIX}{gate}", extra={"seq": 0}))
    wait_until(lambda: len(_inflight(rclient, 0)) == 1, 60, what="shard 0's message running")

    # Another owner takes shard 0 (what a long stall or a Redis failover can do).
    rclient.delete(keys.shard_lease(0))
    intruder = ShardLease(rclient, 0, ttl_s=120)
    assert intruder.acquire() is not None
    wait_until(lambda: "LEASE LOST: shard 0 leaves host" in workers.log("first"), 60,
               what="the first host giving shard 0 up")
    assert first.poll() is None, "the host exited"
    send(producer, ChatMessage(lost_user, f"{lost_user} #1", extra={"seq": 1}))
    for seq in range(3):
        send(producer, ChatMessage(kept_user, f"{kept_user} #{seq}", extra={"seq": seq}))
    wait_until(lambda: len(_replies(rclient, kept_user)) == 3, 60,
               what="shard 1 still answered by the first host")
    assert {_pid(r) for r in _replies(rclient, kept_user)} == {first.pid}
    assert _holder_pid(rclient, 1) == first.pid
    assert rclient.llen("shard.0") == 1 and not _replies(rclient, lost_user)

    # The intruder leaves. The first host's run still waits at the gate: only the second may
    # take the shard; it restores the message and runs it too.
    intruder.release()
    wait_until(lambda: _holder_pid(rclient, 0) == second.pid, 60, what="the second host")
    wait_until(lambda: "restored 1 stranded message(s)" in workers.log("second")
               and len(_inflight(rclient, 0)) == 1, 60, what="the second host running it")
    rclient.set(gate, "open")
    wait_until(lambda: len(_replies(rclient, lost_user)) == 2, 60, what="shard 0's replies")
    assert _seqs(rclient, lost_user) == [0, 1]
    assert {_pid(r) for r in _replies(rclient, lost_user)} == {second.pid}

    # Its run over, the first host stands by for shard 0 again: it takes over at once when the
    # second dies.
    workers.kill("second")
    wait_until(lambda: _holder_pid(rclient, 0) == first.pid, 60, what="the first host back")
    send(producer, ChatMessage(lost_user, f"{lost_user} #2", extra={"seq": 2}))
    wait_until(lambda: len(_replies(rclient, lost_user)) == 3, 60, what="the third reply")
    report = check_order(rclient, {lost_user: 3, kept_user: 3})
    assert (report.missing, report.duplicated, report.violations) == (0, 0, 0), report
    assert _pid(_replies(rclient, lost_user)[-1]) == first.pid
    _no_errors(workers, "first")


def test_a_stopping_host_keeps_its_leases_until_its_runs_have_ended(producer, workers,
                                                                    rclient):
    """SIGTERM (a warm shutdown) reaches a host while one of its messages runs, held at a
    gate for longer than the lease TTL (3 s), with a standby host waiting. Breaks if the
    stopping host stops renewing its leases before its runs have ended (its keeper stopped
    with the consumers): the lease runs out under the run and passes to the standby (seen:
    the standby holds it a whole TTL after the shutdown began), which runs the message
    again, and the stopping host's own reply is fenced and thrown away. Also
    breaks if the host does not answer the message, exit 0 and give the lease up."""
    workers.env.update(AI_HANDLER="tests.handlers:gated", SHARD_LEASE_TTL_S="3")
    [user] = _users_on(0, 1)
    host = workers.start_host("host", "0", 1)
    wait_until(lambda: _holder_pid(rclient, 0) == host.pid, 60, what="the host's lease")
    standby = workers.start_host("standby", "0", 1)
    wait_until(lambda: "hosting shards [0]" in workers.log("standby"), 60,
               what="the standby host")
    gate = "test:gate:stop"
    send(producer, ChatMessage(user, f"{GATE_PREFIX}{gate}", extra={"seq": 0}))
    wait_until(lambda: len(_inflight(rclient, 0)) == 1, 60, what="the message running")
    host.send_signal(signal.SIGTERM)
    wait_until(lambda: "Warm shutdown" in workers.log("host"), 60, what="the warm shutdown")
    began = float("{}.{:06d}".format(*rclient.time()))
    lease = keys.shard_lease(0)
    wait_until(lambda: float(rclient.hget(lease, "renewed_at") or 0) > began + 3, 60,
               what="a renewal a whole TTL after the shutdown began")
    assert _holder_pid(rclient, 0) == host.pid
    rclient.set(gate, "open")
    assert host.wait(60) == 0
    wait_until(lambda: _holder_pid(rclient, 0) == standby.pid, 60, what="the standby's turn")
    assert [(_pid(r), r["seq"]) for r in _replies(rclient, user)] == [(host.pid, "0")]
    assert "restored 0 stranded message(s)" in workers.log("standby")
    _no_errors(workers, "host")


class ReplyCutter(threading.Thread):
    """A TCP proxy in front of Redis that, once armed, forwards the next command matching
    ``pattern`` and cuts that connection before its reply comes back: what a client sees
    when Redis crashes after running (and persisting) a command but before replying."""

    def __init__(self, redis_port: int, pattern: bytes) -> None:
        super().__init__(name="reply-cutter", daemon=True)
        self.redis_port = redis_port
        self.pattern = pattern
        self.armed = threading.Event()
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]

    def run(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.redis_port))
            cutting = threading.Event()  # set: this connection's replies are dropped
            for source, sink, upstream in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pipe, args=(source, sink, upstream, cutting),
                                 daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, upstream: bool,
              cutting: threading.Event) -> None:
        try:
            while chunk := source.recv(65536):
                if not upstream and cutting.is_set():
                    return
                if upstream and self.armed.is_set() and self.pattern in chunk:
                    self.armed.clear()
                    cutting.set()
                    sink.sendall(chunk)
                    time.sleep(0.3)  # Redis runs it; its reply is dropped
                    self.cut.set()
                    return
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                    end.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_a_take_whose_reply_is_lost_puts_what_it_took_back(producer, workers, rclient,
                                                           redis_server):
    """The host's connection breaks after Redis ran a take but before its reply arrived (a
    Redis crash after the AOF write; chaos lost a message this way): the host does not know
    what the take moved into the in-flight list, and keeps the lease. Breaks if the host just
    takes again: the moved message stays in flight, run by nobody, until the next takeover,
    and the user's next message is answered first (or the first never is)."""
    take_on_shard_0 = b"$1\r\n3\r\n$7\r\nshard.0\r\n"  # EVALSHA <take> 3 shard.0 ...
    cutter = ReplyCutter(redis_server.port, take_on_shard_0)
    cutter.start()
    try:
        [user] = _users_on(0, 1)
        url = f"redis://127.0.0.1:{cutter.port}/0"
        host = workers.start("host", host_worker_argv(0), REDIS_URL=url, SHARD_RANGE="0",
                             SHARD_CONCURRENCY="1")
        wait_until(lambda: _holder_pid(rclient, 0) == host.pid, 60, what="the host's lease")
        cutter.armed.set()
        send(producer, ChatMessage(user, "m1", extra={"seq": 0}))
        wait_until(cutter.cut.is_set, 60, what="a take cut off from its reply")
        wait_until(lambda: "take failed" in workers.log("host"), 60, what="the failed take")
        send(producer, ChatMessage(user, "m2", extra={"seq": 1}))
        wait_until(lambda: 1 in _seqs(rclient, user), 60, what="m2 answered")
        assert _seqs(rclient, user) == [0, 1], "m2 was answered before m1"
        assert _holder_pid(rclient, 0) == host.pid, "the host lost its lease: not the case"
        wait_until(lambda: not _inflight(rclient, 0), 60, what="an empty in-flight list")
    finally:
        cutter.close()


# ---- two hosts on one range --------------------------------------------------------------


class HolderSampler(threading.Thread):
    """Samples which process holds each shard's lease, every few milliseconds."""

    def __init__(self, url: str, shards: int) -> None:
        super().__init__(name="holder-sampler", daemon=True)
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.shards = shards
        self.times: list[float] = []
        self.holders: list[list[int | None]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            with self.client.pipeline(transaction=False) as pipe:
                for shard in range(self.shards):
                    pipe.hget(keys.shard_lease(shard), "holder")
                found = pipe.execute()
            self.holders.append([int(h.rpartition(":")[2]) if h else None for h in found])
            self.times.append(time.time())

    def around(self, shard: int, at: float) -> set[int | None]:
        """The holders of ``shard`` at the last sample before ``at`` and the first after it."""
        i = bisect.bisect_left(self.times, at)
        return {self.holders[j][shard] for j in (i - 1, i) if 0 <= j < len(self.times)}


def test_two_hosts_on_one_range_never_answer_one_shard_at_once(producer, workers, rclient,
                                                                redis_url):
    """Two hosts with the same SHARD_RANGE (0-3, K=4) under load, while the shards pass from
    one to the other: the owner of everything is frozen past its leases (its runs resume
    later), then killed with kill -9. The lease holders are sampled every 5 ms. Breaks if a
    reply is written by a host that did not hold its shard's lease at that moment (e.g. a
    host's run not fenced on its own lease, ``running_under`` left out of
    ``execute.run_message``: the frozen host's runs answer after the other took over), or if
    any user's replies are duplicated, missing or out of order. (A take not conditional on
    the lease is the take-window test's: here the resumed host's keeper finds its leases
    gone before its consumers take.)"""
    workers.env.update(AI_HANDLER="tests.handlers:random_latency", SHARD_LEASE_TTL_S="6")
    a = workers.start_host("a", "0-3", 4)
    wait_until(lambda: all(_holder_pid(rclient, s) == a.pid for s in range(SHARDS)), 60,
               what="host a holding every shard")
    b = workers.start_host("b", "0-3", 4)
    wait_until(lambda: "hosting shards [0, 1, 2, 3]" in workers.log("b"), 60,
               what="host b standing by")
    sampler = HolderSampler(redis_url, SHARDS)
    sampler.start()
    users = [u for shard in range(SHARDS) for u in _users_on(shard, 4, f"s{shard}-")]
    sent = Counter[str]()
    try:
        def burst() -> None:
            for user in users:
                send(producer, ChatMessage(user, f"{user} #{sent[user]}",
                                           extra={"seq": sent[user]}))
                sent[user] += 1

        for _ in range(3):
            burst()
        wait_until(lambda: any(r for u in users for r in _replies(rclient, u)), 60,
                   what="a's first replies")
        _freeze(a.pid)  # mid-load: some of a's runs are in flight
        try:
            burst()
            wait_until(lambda: all(_holder_pid(rclient, s) == b.pid for s in range(SHARDS)),
                       60, what="host b taking every shard from the frozen host")
            burst()
        finally:
            os.killpg(a.pid, signal.SIGCONT)
        wait_until(lambda: all(f"LEASE LOST: shard {s} leaves host" in workers.log("a")
                               for s in range(SHARDS)), 60, what="host a giving its shards up")
        for _ in range(2):
            burst()
        workers.kill("b")  # a, standing by, breaks the dead host's leases at once
        for _ in range(2):
            burst()
        total = sum(sent.values())
        wait_until(lambda: delivered_count(rclient) >= total, 120, what="every reply")
    finally:
        sampler.stop.set()
        sampler.join()
    report = check_order(rclient, dict(sent))
    assert (report.answered, report.missing, report.duplicated, report.violations) == (
        total, 0, 0, 0), report.bad_users
    answered_by: Counter[int] = Counter()
    for user in users:
        shard = shard_for(user, SHARDS)
        for reply in _replies(rclient, user):
            holders = sampler.around(shard, float(reply["delivered_at"]))
            assert _pid(reply) in holders, (user, reply, holders)
            answered_by[_pid(reply)] += 1
    assert set(answered_by) == {a.pid, b.pid}, answered_by
    print(f"\nreplies by host: {dict(answered_by)}; {len(sampler.times)} lease samples")


# ---- the take window ------------------------------------------------------------------------


def _blocked_on_queue(client: redis.Redis) -> list[dict[str, Any]]:
    """Clients blocked in Redis on a BLMOVE (only the shard's owner waits on one here)."""
    return [c for c in client.client_list() if c.get("cmd") == "blmove" and "b" in c["flags"]]


@pytest.mark.parametrize("workers", RUNTIMES, indirect=True)
def test_consumer_paused_in_its_wait_takes_nothing_after_losing_its_lease(producer, workers,
                                                                          rclient):
    """The take window (issue 10 item 4). The owner of shard 0 waits on its empty queue, a
    blocking command in Redis, and is frozen (SIGSTOP) at the start of that wait; its lease
    ends and the standby takes the shard; then m1 and m2 of one user are sent. The standby
    must answer m1, then m2, while the frozen owner is still frozen; after SIGCONT the owner
    takes nothing and gives the shard up.

    The lease is ended by deleting its key (what its expiry does), at once: the frozen
    owner's blocking command, sent at most 1 s before, is then still pending in Redis when m1
    arrives. Breaks if that command can move a message (the old take: ``BLMOVE shard.0
    inflight`` after the lease check, 9983b81): Redis serves it to the frozen owner, m1 lands
    in the in-flight list of a consumer that no longer owns the shard, and the standby
    answers m2 first (m1 only at the next takeover). Also breaks if a resumed owner takes or
    answers anything."""
    workers.env.update(SHARD_LEASE_TTL_S="6", AI_LATENCY_MS="10")
    [user] = _users_on(0, 1)
    owner = workers.start_shard(0, "owner")
    wait_until(lambda: _holder_pid(rclient, 0) == owner.pid, 60, what="the owner's lease")
    standby = workers.start_shard(0, "standby")
    workers.wait_standing_by("standby", 0)
    wait_until(lambda: _blocked_on_queue(rclient), 60, what="the owner waiting on its queue")

    # Catch a wait at its start: end the pending one as its timeout would; the owner sends
    # the next at once, with its whole second still ahead.
    for client in _blocked_on_queue(rclient):
        rclient.client_unblock(client["id"])
    wait_until(lambda: _blocked_on_queue(rclient), 10, interval_s=0.002,
               what="the owner's next wait")
    _freeze(owner.pid)
    try:
        rclient.delete(keys.shard_lease(0))
        wait_until(lambda: _holder_pid(rclient, 0) == standby.pid, 30, interval_s=0.005,
                   what="the standby taking the shard")
        for seq in (0, 1):
            send(producer, ChatMessage(user, f"m{seq + 1}", extra={"seq": seq}))
        wait_until(lambda: 1 in _seqs(rclient, user), 60, what="m2 answered")
        assert _seqs(rclient, user) == [0, 1], "m2 was answered before m1"
        assert psutil.Process(owner.pid).status() == psutil.STATUS_STOPPED
    finally:
        os.killpg(owner.pid, signal.SIGCONT)
    workers.wait_lease_lost("owner", 0)
    send(producer, ChatMessage(user, "m3", extra={"seq": 2}))
    wait_until(lambda: len(_seqs(rclient, user)) == 3, 60, what="m3 answered")
    assert _seqs(rclient, user) == [0, 1, 2]
    assert {_pid(r) for r in _replies(rclient, user)} == {standby.pid}
    assert "Task shardline" not in workers.log("owner"), "the resumed owner ran a task"
    wait_until(lambda: not _inflight(rclient, 0), 60, what="an empty in-flight list")


# ---- the registry shared by a host's threads ------------------------------------------------


class InflightSampler(threading.Thread):
    """Samples one shard's in-flight list (lengths, and the users in it) every few ms."""

    def __init__(self, url: str, shards: range) -> None:
        super().__init__(name="inflight-sampler", daemon=True)
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.shards = shards
        self.samples: list[list[str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.003):
            with self.client.pipeline(transaction=False) as pipe:
                for shard in self.shards:
                    pipe.lrange(keys.inflight(shard_queue(shard)), 0, -1)
                lists = pipe.execute()
            self.samples.extend([_user(json.loads(raw)) for raw in items] for items in lists)

    def __enter__(self) -> InflightSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()

    @property
    def most(self) -> int:
        return max((len(s) for s in self.samples), default=0)

    def two_of_one_user(self) -> list[list[str]]:
        return [s for s in self.samples if len(set(s)) < len(s)]


def _reply_texts_are_right(client: redis.Redis, sent: dict[str, int]) -> None:
    """Each reply answers its own message with its user's own history (offline responder:
    ``re: <text> (turn n)``, n counting the user's earlier turns)."""
    for user, count in sent.items():
        texts = [r["text"] for r in _replies(client, user)]
        assert texts == [f"re: {user} #{n} (turn {n + 1})" for n in range(count)], (user, texts)


def _counted(client: redis.Redis, metric: str, label: str) -> int:
    """The sum of ``metric``'s series of send_ai_response whose last label is ``label``."""
    series = [json.loads(f) for f in client.hgetall(metric)]
    values = client.hgetall(metric)
    return sum(int(values[json.dumps(s, separators=(",", ":"))]) for s in series
               if s[0] == SEND_AI_RESPONSE and s[-1] == label)


def test_registry_is_built_once_and_shared_by_a_hosts_threads(producer, workers, rclient,
                                                              redis_url):
    """One host, every shard, K=8, 40 users with 6 messages each: up to 32 messages at once
    on the host's threads, all through one registry. Breaks if the registry is built per
    thread or per shard (a build count above 1, or builds under several processes), if a
    shared component mixes up concurrent calls or a user's messages overlap (a reply with
    another turn's history: the reply texts are checked one by one; ``busy=[]`` in
    ``host._consume`` fails here), if the metrics recorder loses or double-counts
    a run (outcomes and durations counted once per message), or if any run fails (an error
    in the log)."""
    workers.env.update(AI_HANDLER="tests.handlers:random_latency")
    users = [f"r{n}" for n in range(40)]
    sent: dict[str, int] = {}
    for n in range(6):
        for user in users:
            send(producer, ChatMessage(user, f"{user} #{n}", extra={"seq": n}))
            sent[user] = n + 1
    total = sum(sent.values())
    with InflightSampler(redis_url, range(SHARDS)) as sampler:
        host = workers.start_host("host", "0-3", 8)
        wait_until(lambda: delivered_count(rclient) >= total, 180, what="every reply")
    report = check_order(rclient, sent)
    assert (report.answered, report.missing, report.duplicated, report.violations) == (
        total, 0, 0, 0), report.bad_users
    _reply_texts_are_right(rclient, sent)
    assert sampler.most >= 2, "no shard ever ran two messages at once: nothing was shared"

    builds = rclient.hgetall(keys.REGISTRY_BUILDS)
    assert {f.partition("@")[0] for f in builds} == COMPONENTS, builds
    assert {f.rpartition(":")[2] for f in builds} == {str(host.pid)}, builds
    assert set(builds.values()) == {"1"}, builds

    # A run's metrics are recorded just after its reply is written.
    wait_until(lambda: _counted(rclient, keys.TASK_OUTCOMES, "succeeded") >= total, 60,
               what="every success counted")
    assert _counted(rclient, keys.TASK_OUTCOMES, "succeeded") == total
    assert _counted(rclient, keys.TASK_DURATIONS, "count") == total
    _no_errors(workers, "host")


def _first_task(ready: threading.Barrier, got: list[int]) -> None:
    from tasks import instrumentation

    ready.wait()
    got.append(id(instrumentation.task_metrics()))


def test_threads_starting_their_first_tasks_at_once_share_one_metrics_recorder(redis_url):
    """A host starts with a backlog: its threads' first tasks call
    ``tasks.instrumentation.task_metrics`` at the same moment. Breaks if that can build
    several recorders (a check-then-set without a lock): a run started on a recorder that
    another thread then replaced loses its duration, and its dead-letter mark (counted twice).
    In this process, against a real registry; the thread switch interval is made tiny so
    the race shows within the trials (about one trial in twelve without the lock)."""
    from tasks import instrumentation

    start_services(dataclasses.replace(celeryconfig.settings, redis_url=redis_url))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        split = 0
        for _ in range(200):
            instrumentation._recorder = None
            ready = threading.Barrier(16)
            got: list[int] = []
            threads = [threading.Thread(target=_first_task, args=(ready, got))
                       for _ in range(16)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            split += len(set(got)) > 1
    finally:
        sys.setswitchinterval(interval)
        instrumentation._recorder = None
        stop_services()
    assert split == 0, f"{split} of 200 trials built more than one recorder"


def test_a_run_ending_during_a_take_wakes_the_consumer(rclient):
    """A consumer reads the shard's busy users, takes (a round trip), finds only messages of
    busy users and waits for a run to end. Breaks if a run that ended during the take is
    missed and the consumer sleeps its whole wait (``WAIT_S``) while that run's user's next
    message is takeable: in a 200 x 5 burst at 200 ms that cost a quarter of the throughput
    and stretched a user's replies up to 1.5 s apart. The wait is made 10 minutes here."""
    slot = HostedShard(0, concurrency=2)
    slot.acquired(ShardLease(rclient, 0, ttl_s=30.0))
    run = slot.start(b"m1", "u1", slot.generation)
    seen = slot.changes  # read with the busy users, before the take
    slot.finished(run)  # u1's run ends while the take is in Redis
    waiter = threading.Thread(target=slot.wait_for_change, args=(seen, 600.0), daemon=True)
    waiter.start()
    waiter.join(30)
    assert not waiter.is_alive(), "the consumer sleeps through a run that ended during its take"


# ---- K gates a shard ------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_host_never_runs_more_than_k_of_a_shard_nor_two_of_one_user(concurrency: int,
                                                                      producer, workers,
                                                                      rclient, redis_url):
    """8 users of one shard, 6 messages each (in runs of 3), on a host with K=1 (the design
    card: one message of the shard at a time) and K=4. The shard's in-flight list (every
    taken, unacked message) is sampled every 3 ms. Breaks if it ever holds more than K
    messages (e.g. ``HostedShard.room`` not counting the running ones: 8 seen), if it holds
    two of one user or a user's order breaks (e.g. ``busy=[]`` in ``host._consume``, K=4), or
    if it never reaches K (K not used)."""
    workers.env.update(AI_HANDLER="tests.handlers:random_latency")
    users = _users_on(0, 8)
    sent: dict[str, int] = {}
    for first in (0, 3):  # each user's messages in runs of 3 at the head: tempting to take
        for user in users:
            for n in range(first, first + 3):
                send(producer, ChatMessage(user, f"{user} #{n}", extra={"seq": n}))
                sent[user] = n + 1
    total = sum(sent.values())
    with InflightSampler(redis_url, range(1)) as sampler:
        workers.start_host("host", "0", concurrency)
        wait_until(lambda: delivered_count(rclient) >= total, 180, what="every reply")
    report = check_order(rclient, sent)
    assert (report.answered, report.missing, report.duplicated, report.violations) == (
        total, 0, 0, 0), report.bad_users
    assert sampler.most == concurrency, (sampler.most, concurrency)
    assert not sampler.two_of_one_user(), sampler.two_of_one_user()[:5]
    print(f"\nK={concurrency}: {len(sampler.samples)} samples, at most {sampler.most} in flight")
