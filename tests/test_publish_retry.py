"""A publish that ran in Redis but whose reply was lost: the producer publishes again (same
task ids), and neither the user nor the order alarm may notice.

The reply is lost for real: a TCP proxy in front of the producer's Redis forwards the publish
script's call, and when Redis answers it closes the producer's connection instead of passing
the reply on. The producer sees a dropped connection after Redis has enqueued the message.
"""

from __future__ import annotations

from deploy.launcher import wait_for_workers
from routing import ChatMessage, keys, queue_for, send
from tests.harness import producer_for, wait_until
from tests.redis_proxy import ReplyDropper

USER = "retry-user"


def _outbox_texts(rclient, user: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [f["text"] for _, f in rclient.xrange(keys.outbox(user))]


def test_a_lost_publish_reply_is_retried_without_a_gap(redis_server, redis_url, rclient,
                                                       producer, workers):
    """Four messages, the 2nd (with a message id) and the 3rd (without) each published
    through a dropped reply, then retried by the producer. Every message must be answered
    once, in order, the order alarm must count nothing, and the 2nd must come back as
    published with its number (not as a duplicate of itself).

    Breaks if the publish script treats a retry of a claimed message as a duplicate (the
    caller was told "duplicate" for its own first publish, so the API left it out of the
    ingest log), or if a copy of an unclaimed message, skipped by the worker's done-marker,
    leaves its number as a gap that counts on shardline_order_violations_total."""
    proxy = ReplyDropper(redis_server.port)
    app = producer_for(f"redis://127.0.0.1:{proxy.port}/0")
    try:
        workers.start_shards(4, producer)
        wait_for_workers(producer, [queue_for(USER)])
        first = send(app, ChatMessage(USER, "m1", message_id="m1"))
        proxy.armed.set()
        claimed = send(app, ChatMessage(USER, "m2", message_id="m2"))
        assert proxy.dropped == 1
        proxy.armed.set()
        unclaimed = send(app, ChatMessage(USER, "m3"))
        assert proxy.dropped == 2
        last = send(app, ChatMessage(USER, "m4", message_id="m4"))
    finally:
        app.close()
        proxy.close()
    assert (first.seq, claimed.seq, claimed.duplicate) == (1, 2, False)
    assert unclaimed.seq == 4  # its lost first publish was given 3
    assert last.seq == 5
    wait_until(lambda: rclient.llen(queue_for(USER)) == 0
               and len(_outbox_texts(rclient, USER)) >= 4, 60, what="every message answered")
    wait_until(lambda: rclient.hget(keys.USER_STARTED_SEQ, USER) == "5", 30,
               what="the last number started")
    texts = [t.split(" (turn")[0] for t in _outbox_texts(rclient, USER)]
    assert texts == ["re: m1", "re: m2", "re: m3", "re: m4"]
    assert rclient.hgetall(keys.ORDER_VIOLATIONS) == {}
