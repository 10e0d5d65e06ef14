"""Redis outages: producers retry a publish for PUBLISH_RETRY_S then raise PublishFailed;
shard workers reconnect on their own. The private server is stopped and started again on the
same port and data directory (deploy.embedded_redis)."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

import celeryconfig
from deploy.launcher import wait_for_workers
from routing import ChatMessage, DispatchResult, PublishFailed, keys, queue_for, send
from routing.queues import shard_of_queue
from tests.harness import wait_until

#: What a Celery worker logs when its broker connection drops (celery.worker.consumer).
CONNECTION_LOST = "Connection to broker lost"


def _publish_budget(monkeypatch, seconds: float) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(celeryconfig, "settings",
                        dataclasses.replace(celeryconfig.settings, publish_retry_s=seconds))


@pytest.fixture
def short_budget(monkeypatch):  # type: ignore[no-untyped-def]
    """3 s: the publish that must give up does so soon."""
    _publish_budget(monkeypatch, 3.0)


@pytest.fixture
def long_budget(monkeypatch):  # type: ignore[no-untyped-def]
    """20 s: far more than a stop and start of Redis takes even on a loaded machine (a 3 s
    budget needed Redis serving again within about 2 s of the first failed attempt)."""
    _publish_budget(monkeypatch, 20.0)


def test_publish_waits_for_redis_to_come_back(redis_server, producer, rclient, long_budget):
    """Breaks if a publish fails at once when Redis is briefly down (no retry), or if the
    retried publish is lost or sent twice once Redis is back."""
    send(producer, ChatMessage(1, "warm up"))
    redis_server.stop()
    result: list[DispatchResult | BaseException] = []

    def publish() -> None:
        try:
            result.append(send(producer, ChatMessage(1, "during outage", message_id="o-1")))
        except BaseException as exc:  # surfaced below
            result.append(exc)

    thread = threading.Thread(target=publish)
    thread.start()
    time.sleep(1.0)  # the publish is retrying now
    redis_server.start()
    thread.join(30)
    assert len(result) == 1 and isinstance(result[0], DispatchResult), result
    assert rclient.llen(queue_for(1)) == 2


def test_publish_gives_up_with_publish_failed(redis_server, producer, short_budget):
    """Breaks if a publish hangs forever, or fails with a raw kombu/redis error instead of
    PublishFailed naming the broker and the budget, when Redis stays down."""
    send(producer, ChatMessage(1, "warm up"))
    redis_server.stop()
    try:
        with pytest.raises(PublishFailed, match="PUBLISH_RETRY_S"):
            send(producer, ChatMessage(1, "lost", message_id="o-2"))
    finally:
        redis_server.start()


def test_worker_reconnects_after_redis_restart(redis_server, producer, workers, rclient):
    """Breaks if a shard worker dies or stops consuming when Redis goes away and comes back
    (e.g. broker_connection_retry off, or a service client that never reconnects)."""
    shard = shard_of_queue(queue_for(2))
    assert shard is not None
    # A lease TTL far above the outage: with the default 10 s the lease keeper ends the worker
    # (by design) 6 s after its last renewal, which a slow stop and start of Redis on a loaded
    # machine can exceed. This test is about reconnecting, not about losing the lease.
    workers.env["SHARD_LEASE_TTL_S"] = "60"
    name = f"shard-{shard}"
    workers.start_shard(shard)
    wait_for_workers(producer, [queue_for(2)])
    send(producer, ChatMessage(2, "before", extra={"seq": 0}))
    wait_until(lambda: rclient.xlen(keys.outbox("2")) == 1, 60, what="first reply")
    pid = workers.procs[name].pid
    lost_before = workers.log(name).count(CONNECTION_LOST)
    redis_server.stop()
    wait_until(lambda: workers.log(name).count(CONNECTION_LOST) > lost_before, 60,
               interval_s=0.1, what="the worker noticing the lost broker connection")
    redis_server.start()
    send(producer, ChatMessage(2, "after", extra={"seq": 1}))
    wait_until(lambda: rclient.xlen(keys.outbox("2")) == 2, 90, what="reply after restart")
    assert workers.procs[name].poll() is None
    assert workers.procs[name].pid == pid
