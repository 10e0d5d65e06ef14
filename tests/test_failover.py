"""Sentinel failover under a steady load: a master, a replica and three sentinels (real
``redis-server`` processes on free ports), shard workers reading ``REDIS_URL=sentinel://...``.

Each test runs ``SENTINEL FAILOVER`` twice while a producer sends numbered messages for a few
users and the relay sends the replies to a fake Telegram, then drains and counts, per user,
replies missing, duplicated and out of order, and replies the relay sent twice; it holds to the
promise in docs/production-redis.md (what a failover can lose): with
``REDIS_WAIT_REPLICAS=1`` nothing is lost, duplicated, reordered or sent twice; without it
nothing is duplicated in the outbox or reordered, and what was lost or sent twice is reported.
Each also reports the time from a failover to the first reply written after it.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

import celeryconfig
from cli.chatload import check_order
from deploy.launcher import wait_for_workers
from deploy.sentinel_group import SentinelGroup
from routing import ChatMessage, PublishFailed, keys, send
from routing.queues import shard_queue
from routing.redis_url import client_for
from services.redis_client import connect
from services.relay import TelegramRelay
from tests.harness import WorkerSet, producer_for, wait_until
from tests.test_relay import TOKEN, FakeTelegram

SHARDS = 2
USERS = 6
#: Longer than Sentinel takes to demote the old master (about 10 s after the promotion), as
#: docs/production-redis.md asks of a Sentinel deployment: renewals sent to the old master
#: meanwhile are lost.
LEASE_TTL_S = 30


@pytest.fixture(scope="module")
def group(sentinel_group: SentinelGroup) -> SentinelGroup:
    return sentinel_group


@dataclass
class Load:
    """One producer thread: each user's next message only after the last one was published
    (a ``PublishFailed`` is sent again under the same message id, which the dedup key keeps
    from being published twice)."""

    app: Any
    sent: dict[str, int] = field(default_factory=lambda: {f"fo-{n}": 0 for n in range(USERS)})
    publish_failed: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        users = list(self.sent)
        turn = 0
        while not self.stopping.is_set():
            user = users[turn % len(users)]
            n = self.sent[user]
            try:
                send(self.app, ChatMessage(user, f"message {n}", message_id=str(n),
                                           chat_id=1000 + users.index(user)))
            except PublishFailed:
                self.publish_failed += 1
                continue
            self.sent[user] = n + 1
            turn += 1
            self.stopping.wait(0.02)


@dataclass
class Count:
    missing: int = 0
    duplicated: int = 0
    reordered: int = 0
    #: Messages the relay sent to the (fake) Telegram more than once.
    sent_twice: int = 0


def sent_twice(telegram: FakeTelegram) -> int:
    """Messages whose reply the relay delivered more than once ("re: message N ...")."""
    twice = 0
    for texts in telegram.delivered().values():
        numbers = [int(m.group(1)) for t in texts if (m := re.match(r"re: message (\d+)", t))]
        twice += len(numbers) - len(set(numbers))
    return twice


def count_replies(client: redis.Redis, sent: dict[str, int]) -> Count:
    report = check_order(client, sent, number="message_id")  # message ids are 0, 1, ...
    return Count(missing=report.missing, duplicated=report.duplicated,
                 reordered=report.violations)


def first_reply_after(client: redis.Redis, users: list[str], at: float) -> float | None:
    entries: list[Any] = [e for user in users for e in client.xrange(keys.outbox(user))]  # type: ignore[union-attr]
    times = [float(fields["delivered_at"]) for _, fields in entries
             if float(fields["delivered_at"]) > at]
    return min(times) if times else None


def run_failovers(group: SentinelGroup, tmp_path: Path, runtime: str, wait_replicas: int,
                  monkeypatch: pytest.MonkeyPatch) -> tuple[Count, list[float], Load]:
    group.wait_ready()  # the last test's old master is a replica again
    with client_for(group.url, decode_responses=True) as client:
        client.flushall()
    monkeypatch.setattr(celeryconfig, "settings", dataclasses.replace(
        celeryconfig.settings, redis_wait_replicas=wait_replicas, shard_count=SHARDS))
    workers = WorkerSet(group.url, tmp_path, runtime, SHARDLINE_HOME=str(tmp_path / "home"),
                        SHARD_COUNT=str(SHARDS), REDIS_WAIT_REPLICAS=str(wait_replicas),
                        ORDERED_MAX_ATTEMPTS="50", ORDERED_RETRY_MAX_S="1",
                        SHARD_LEASE_TTL_S=str(LEASE_TTL_S))
    app = producer_for(group.url)
    load = Load(app)
    producer = threading.Thread(target=load.run, daemon=True)
    gaps: list[float] = []
    client = connect(group.url)  # retries a connection the failover closes
    telegram = FakeTelegram().__enter__()
    relay = TelegramRelay(connect(group.url), TOKEN, telegram.server.url,
                          wait_replicas=wait_replicas, retry_max_s=1.0)
    relay_stop = threading.Event()
    relay_thread = threading.Thread(target=relay.run_forever, args=(relay_stop, 200), daemon=True)
    relay_thread.start()
    try:
        for shard in range(SHARDS):
            workers.start_shard(shard)
        wait_until(lambda: _safe(lambda: wait_for_workers(
            app, [shard_queue(s) for s in range(SHARDS)]) or True), 120, what="the workers")
        producer.start()
        users = list(load.sent)
        wait_until(lambda: int(client.xlen(keys.OUTBOX_FEED)) >= 20, 60, what="first replies")
        for _ in range(2):
            group.failover()
            promoted = time.time()
            wait_until(lambda at=promoted: _safe(lambda: first_reply_after(client, users, at)), 120,
                       interval_s=0.1, what="a reply after the failover")
            first = first_reply_after(client, users, promoted)
            assert first is not None
            gaps.append(first - promoted)
        load.stopping.set()
        producer.join()
        total = sum(load.sent.values())
        drain(client, load.sent)
        # Every worker is still the one started: none exited on the failovers.
        assert all(proc.poll() is None for proc in workers.procs.values()), workers.procs
        count = count_replies(client, load.sent)
        settle(lambda: sum(map(len, telegram.delivered().values())))
        count.sent_twice = sent_twice(telegram)
        print(f"\nfailover[{runtime}, REDIS_WAIT_REPLICAS={wait_replicas}]: sent={total} "
              f"missing={count.missing} duplicated={count.duplicated} "
              f"reordered={count.reordered} sent_twice={count.sent_twice} "
              f"publish_failed={load.publish_failed} "
              f"gaps_s={[round(g, 2) for g in gaps]}")
        return count, gaps, load
    finally:
        load.stopping.set()
        relay_stop.set()
        relay_thread.join()
        relay.close()
        telegram.__exit__(None, None, None)
        workers.stop_all()
        app.close()
        client.close()


def drain(client: redis.Redis, sent: dict[str, int]) -> None:
    """Until nothing is missing, or nothing is queued or in flight and the count of missing
    replies stayed the same for 10 s (without the option some are never coming)."""
    last: tuple[int, float] = (-1, time.monotonic())

    def settled() -> bool:
        nonlocal last
        missing = count_replies(client, sent).missing
        if missing == 0:
            return True
        queued = sum(int(client.llen(q)) + int(client.llen(keys.inflight(q)))
                     for q in (shard_queue(s) for s in range(SHARDS)))
        if missing != last[0] or queued:
            last = (missing, time.monotonic())
        return time.monotonic() - last[1] > 10

    wait_until(lambda: _safe(settled), 180, interval_s=0.5, what="the drain")


def settle(reading: Any, still_s: float = 5.0, most_s: float = 60.0) -> None:
    """Until ``reading()`` stayed the same for ``still_s`` (the relay sent what it will)."""
    last, since, deadline = reading(), time.monotonic(), time.monotonic() + most_s
    while time.monotonic() - since < still_s and time.monotonic() < deadline:
        time.sleep(0.2)
        now = reading()
        if now != last:
            last, since = now, time.monotonic()


def _safe(fn: Any) -> Any:
    try:
        return fn()
    except redis.ConnectionError:  # the master is moving: ask again
        return None


@pytest.mark.parametrize("runtime", ["solo", "host-k1"])
def test_no_reply_lost_or_doubled_across_two_failovers_with_wait(
        group: SentinelGroup, tmp_path: Path, runtime: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With REDIS_WAIT_REPLICAS=1, two failovers under load lose no acknowledged publish and
    no reply, double none, reorder none, and the relay sends none twice; no worker exits.
    Fails without the WAIT after the publish (seen: 996 of 1093 missing, the producer kept
    publishing to the demoted master), without the relay's WAITs (seen: 6 replies sent twice,
    its acks on the old master were lost), and with "'master_name' transport option must be
    specified" or "Unrecoverable error" if workers do not follow the new master."""
    count, _, _ = run_failovers(group, tmp_path, runtime, 1, monkeypatch)
    assert dataclasses.asdict(count) == {"missing": 0, "duplicated": 0, "reordered": 0,
                                         "sent_twice": 0}


def test_without_wait_order_holds_and_losses_are_counted(
        group: SentinelGroup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the option the docs promise less: replies in the outbox are never doubled or
    reordered, but acknowledged publishes and replies may be lost (counted, not bounded).
    Fails if a failover makes a worker exit or write a user's replies out of order."""
    count, _, _ = run_failovers(group, tmp_path, "solo", 0, monkeypatch)
    assert count.duplicated == 0
    assert count.reordered == 0
