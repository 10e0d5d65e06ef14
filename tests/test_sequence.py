"""The order alarm: every ordered message that starts is checked against its user's sequence
number (header ``shardline_seq``, assigned by the publish script), on real shard workers.

Normal traffic must count nothing; a message injected by hand with a number that skips ahead
or goes back must be counted for its shard; a redelivered number, an unnumbered message and
the messages a hold releases must not be.
"""

from __future__ import annotations

import subprocess
import sys

from cli.chatload import chat_load, check_order, delivered_count
from deploy.launcher import wait_for_workers
from routing import ChatMessage, dispatch_batch, keys, queue_for, send
from routing.envelope import SEQ_PLACEHOLDER, EnvelopeBuilder
from routing.queues import SEND_AI_RESPONSE, shard_of_queue
from tests.handlers import FAIL_TEXTS
from tests.harness import wait_until

USER = "carol"


def _shard(user: str) -> int:
    shard = shard_of_queue(queue_for(user))
    assert shard is not None
    return shard


def _inject(producer, user: str, seq: int, text: str) -> None:  # type: ignore[no-untyped-def]
    """LPUSH a send_ai_response envelope carrying the fixed sequence number ``seq``, built as
    routing.dispatch builds one, onto ``user``'s shard queue (no publish script: no renumbering)."""
    queue = queue_for(user)
    _, envelope = EnvelopeBuilder(producer).build(SEND_AI_RESPONSE, (user, text),
                                                  {"seq": None}, queue=queue, epoch=0)
    assert SEQ_PLACEHOLDER in envelope
    producer_redis(producer).lpush(queue, envelope.replace(SEQ_PLACEHOLDER, str(seq)))


def producer_redis(producer):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis.from_url(producer.conf.broker_url, decode_responses=True)


def _outbox_texts(rclient, user: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [f["text"] for _, f in rclient.xrange(keys.outbox(user))]


def test_normal_traffic_counts_no_violation(producer, workers, rclient):
    """Breaks if the worker does not see the shardline_seq header (the started-seq record
    stays empty: e.g. the header is read from the wrong place, or the envelope drops it), or
    if in-order traffic is counted as a violation (e.g. the check compares with the wrong
    user's number or is off by one)."""
    workers.env["AI_HANDLER"] = "tests.handlers:random_latency"
    workers.start_shards(4, producer)
    users: list[int | str] = [1, 2, "alice", "bob", 42, "zoë"]
    rounds = chat_load(users, 12, proactive_every=4, seed=3)
    expected: dict[str, int] = {}
    for batch in rounds:
        dispatch_batch(producer, batch)
        for m in batch:
            expected[str(m.user_id)] = expected.get(str(m.user_id), 0) + 1
    total = sum(expected.values())
    wait_until(lambda: delivered_count(rclient) >= total, 120, what="all replies")
    assert check_order(rclient, expected).ok
    assert rclient.hgetall(keys.ORDER_VIOLATIONS) == {}
    started = {user: int(seq) for user, seq in rclient.hgetall(keys.USER_STARTED_SEQ).items()}
    assert started == expected  # each user's last number: its message count (numbered from 1)


def test_injected_gap_and_step_back_are_counted_for_the_shard(producer, workers, rclient):
    """Breaks if a message whose number skips ahead, or goes back, is not counted under its
    shard in keys.ORDER_VIOLATIONS (e.g. the check only updates the record, or counts under
    another field), or if a redelivery of the same number or a message without the header
    (Celery's send_task) is counted."""
    shard = _shard(USER)
    workers.start_shard(shard)
    wait_for_workers(producer, [queue_for(USER)])
    for n in range(3):
        send(producer, ChatMessage(USER, f"hello {n}"))  # numbers 1, 2, 3
    wait_until(lambda: len(_outbox_texts(rclient, USER)) == 3, 60, what="3 replies")
    assert rclient.hgetall(keys.ORDER_VIOLATIONS) == {}

    _inject(producer, USER, 7, "skips 4..6")
    wait_until(lambda: len(_outbox_texts(rclient, USER)) == 4, 60, what="the gap's reply")
    assert rclient.hgetall(keys.ORDER_VIOLATIONS) == {str(shard): "1"}
    assert rclient.hget(keys.USER_STARTED_SEQ, USER) == "7"

    _inject(producer, USER, 5, "goes back to 5")
    wait_until(lambda: len(_outbox_texts(rclient, USER)) == 5, 60, what="the step back's reply")
    assert rclient.hgetall(keys.ORDER_VIOLATIONS) == {str(shard): "2"}

    _inject(producer, USER, 7, "7 again: a redelivery")
    producer.send_task(SEND_AI_RESPONSE, args=(USER, "unnumbered"))
    wait_until(lambda: len(_outbox_texts(rclient, USER)) == 7, 60, what="the last 2 replies")
    assert rclient.hgetall(keys.ORDER_VIOLATIONS) == {str(shard): "2"}
    assert rclient.hget(keys.USER_STARTED_SEQ, USER) == "7"
    log = workers.log(f"shard-{shard}")
    assert log.count("ORDER VIOLATION") == 2, log


def _start_flaky(workers, producer, on_failure: str) -> int:  # type: ignore[no-untyped-def]
    workers.env.update(AI_HANDLER="tests.handlers:flaky", ORDERED_ON_FAILURE=on_failure,
                       ORDERED_MAX_ATTEMPTS="2", ORDERED_RETRY_BASE_S="0.01",
                       BREAKER_FAILURES="1000")
    shard = _shard(USER)
    workers.start_shard(shard)
    wait_for_workers(producer, [queue_for(USER)])
    return shard


def _send_numbered(producer, n: int) -> None:  # type: ignore[no-untyped-def]
    send(producer, ChatMessage(USER, f"{USER}-{n}", message_id=f"{USER}-{n}",
                               extra={"seq": n}))


def test_a_parked_message_counts_as_started(producer, workers, rclient):
    """Breaks if a message that was dead-lettered (skip mode) does not count as started:
    the user's next message would then be counted as a gap."""
    _start_flaky(workers, producer, "skip")
    rclient.sadd(FAIL_TEXTS, f"{USER}-1")
    for n in range(3):
        _send_numbered(producer, n)
    wait_until(lambda: len(_outbox_texts(rclient, USER)) == 2, 60, what="replies 0 and 2")
    assert rclient.zcard(keys.DEAD_LETTER_INDEX) == 1
    assert rclient.hgetall(keys.ORDER_VIOLATIONS) == {}
    assert rclient.hget(keys.USER_STARTED_SEQ, USER) == "3"


def test_messages_released_from_a_hold_count_no_violation(producer, workers, rclient):
    """Hold mode: a parked message holds the user's later ones, the operator replays it
    (an unnumbered resend), and the held ones run in their publish order. Breaks if held
    messages are checked when they are held instead of when they run, lose their number in
    the held list, or run out of order (each would count a violation), or if the replay is
    counted."""
    _start_flaky(workers, producer, "hold")
    rclient.sadd(FAIL_TEXTS, f"{USER}-1")
    for n in range(4):
        _send_numbered(producer, n)
    wait_until(lambda: rclient.llen(keys.held(USER)) == 2, 60, what="messages 2 and 3 held")
    rclient.srem(FAIL_TEXTS, f"{USER}-1")
    letter = str(rclient.zrange(keys.DEAD_LETTER_INDEX, 0, -1)[0])
    done = subprocess.run([sys.executable, "-m", "cli.main", "dlq", "replay", letter],
                          env=workers.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    _send_numbered(producer, 4)
    wait_until(lambda: len(_outbox_texts(rclient, USER)) == 5, 60, what="all 5 replies")
    assert check_order(rclient, {USER: 5}).ok
    assert rclient.hgetall(keys.ORDER_VIOLATIONS) == {}
    assert rclient.hget(keys.USER_STARTED_SEQ, USER) == "5"
