"""Exactly-once delivery: producer-side dedup by message id, and the worker's done-marker."""

from __future__ import annotations

from deploy.launcher import wait_for_workers
from routing import ChatMessage, dispatch_batch, keys, queue_for, send
from routing.queues import SEND_AI_RESPONSE, shard_of_queue
from tests.harness import wait_until


def test_second_dispatch_of_a_message_id_is_a_duplicate(producer, rclient):
    """Breaks if send/dispatch_batch publish a message id twice within the window, or stop
    reporting which dispatch was the first (the duplicate must name the original task id),
    or stop counting the duplicates dropped."""
    first = send(producer, ChatMessage(7, "hi", message_id="m-1"))
    again = send(producer, ChatMessage("7", "hi again", message_id="m-1"))  # same user
    other_user = send(producer, ChatMessage(8, "hi", message_id="m-1"))
    assert not first.duplicate and again.duplicate and not other_user.duplicate
    assert again.task_id == first.task_id
    batch = dispatch_batch(producer, [ChatMessage(7, "a", message_id="m-1"),
                                      ChatMessage(7, "b", message_id="m-2"),
                                      ChatMessage(7, "c", message_id="m-2"),
                                      ChatMessage(7, "d")])
    assert [r.duplicate for r in batch] == [True, False, True, False]
    # Published: 7/m-1, 8/m-1, 7/m-2 and the one without a message id.
    assert sum(rclient.llen(q) for q in {queue_for(7), queue_for(8)}) == 4
    assert 0 < rclient.ttl(keys.dedup("7", "m-1")) <= 24 * 3600
    assert rclient.get(keys.DUPLICATES_DROPPED) == "3"


def test_redelivered_task_is_delivered_once(producer, workers, rclient):
    """Breaks if the worker answers a task id it already answered: e.g. the done-marker is
    not checked before running, or not written atomically with the reply."""
    shard = shard_of_queue(queue_for(5))
    assert shard is not None
    workers.start_shard(shard)
    wait_for_workers(producer, [queue_for(5)])
    for _ in range(2):  # the same task id twice, as a redelivery after a crash would be
        producer.send_task(SEND_AI_RESPONSE, args=(5, "once"), kwargs={"seq": 0},
                           task_id="redelivered-1")
    producer.send_task(SEND_AI_RESPONSE, args=(5, "after"), kwargs={"seq": 1})
    wait_until(lambda: rclient.xlen(keys.outbox("5")) >= 2, 60, what="two replies")
    wait_until(lambda: rclient.llen(queue_for(5)) == 0, 60, what="queue drained")
    seqs = [f["seq"] for _, f in rclient.xrange(keys.outbox("5"))]
    assert seqs == ["0", "1"]
