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


@pytest.fixture
def short_budget(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(celeryconfig, "settings",
                        dataclasses.replace(celeryconfig.settings, publish_retry_s=3.0))


def test_publish_waits_for_redis_to_come_back(redis_server, producer, rclient, short_budget):
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
    workers.start_shard(shard)
    wait_for_workers(producer, [queue_for(2)])
    send(producer, ChatMessage(2, "before", extra={"seq": 0}))
    wait_until(lambda: rclient.xlen(keys.outbox("2")) == 1, 60, what="first reply")
    pid = workers.procs[f"shard-{shard}"].pid
    redis_server.stop()
    time.sleep(2.0)  # the worker notices the lost connection
    redis_server.start()
    send(producer, ChatMessage(2, "after", extra={"seq": 1}))
    wait_until(lambda: rclient.xlen(keys.outbox("2")) == 2, 90, what="reply after restart")
    assert workers.procs[f"shard-{shard}"].poll() is None
    assert workers.procs[f"shard-{shard}"].pid == pid
