"""dispatch_batch: the same messages as Celery's send_task, in one Redis round trip, all or nothing.

Messages are compared as the raw kombu envelopes Redis holds (RPOP from the shard lists),
with only the per-message identifiers normalised and shardline's own headers (publish time,
the shard-map epoch, the user's sequence number) checked and set aside. The round trip is
proven with a TCP proxy in front of the producer's Redis that holds back every reply: if all
200 LPUSHes reach the server while the producer has not received a single reply, the
producer did not wait between them.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
from typing import Any

import pytest
import redis

from routing import ChatMessage, InvalidDispatch, InvalidUserId, dispatch_batch, keys, send
from routing.envelope import EPOCH_HEADER, PUBLISHED_AT_HEADER, SEQ_HEADER
from routing.queues import SHARD_QUEUE_PREFIX, shard_queue
from tests.harness import producer_for, wait_until
from tests.redis_proxy import ReplyGate

SHARDS = 4  # the fixtures' default SHARD_COUNT

#: Fields that differ between two publishes of the same message, and only those.
PER_MESSAGE_HEADERS = ("id", "root_id")
PER_MESSAGE_PROPERTIES = ("correlation_id", "delivery_tag")


def _messages() -> list[ChatMessage]:
    users: list[int | str] = [1, 2, "alice", 42, "42", "bob", 3, "Zoë", 2**70, "dave"]
    out = []
    for i in range(40):
        user = users[i % len(users)]
        out.append(ChatMessage(user, f"message {i} from {user}", message_id=f"m-{i}",
                               chat_id=None if i % 3 else 1000 + i, sent_at=1700000000.0 + i,
                               proactive=i % 5 == 4, extra={"seq": i}))
    return out


def _forget_dedup(client: redis.Redis) -> None:
    """Drop the producer dedup claims, so the same message ids can be published again."""
    for key in client.keys(f"{keys.PREFIX}dedup:*"):
        client.delete(key)


def _drain(client: redis.Redis) -> dict[str, list[dict[str, Any]]]:
    """Every envelope on every shard list, oldest first, removed from Redis."""
    queues: dict[str, list[dict[str, Any]]] = {}
    for queue in sorted(client.keys(f"{SHARD_QUEUE_PREFIX}*")):
        while (raw := client.rpop(queue)) is not None:
            envelope = json.loads(raw)
            assert envelope["properties"]["body_encoding"] == "base64"
            envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
            queues.setdefault(queue, []).append(envelope)
    return queues


def _normalise(queues: dict[str, list[dict[str, Any]]], *,
               ours: bool = True) -> tuple[dict[str, Any], list[str]]:
    """The envelopes with per-message ids replaced by a placeholder, and those task ids.

    ``ours``: published by routing (not by Celery's send_task), so each must carry an int
    sequence number. Both must carry a publish time (send_task's from the before_task_publish
    handler) and the shard-map epoch they were routed under (send_task's stamped by the
    router); all three are removed for the comparison."""
    task_ids = []
    for envelopes in queues.values():
        for env in envelopes:
            headers, props = env["headers"], env["properties"]
            if ours:
                assert isinstance(headers.pop(SEQ_HEADER), int)
            assert isinstance(headers.pop(PUBLISHED_AT_HEADER), float)
            assert headers.pop(EPOCH_HEADER) == 0  # no rescale: the map's first epoch
            assert SEQ_HEADER not in headers and PUBLISHED_AT_HEADER not in headers
            task_ids.append(headers["id"])
            assert headers["root_id"] == headers["id"] == props["correlation_id"]
            for key in PER_MESSAGE_HEADERS:
                headers[key] = "<id>"
            for key in PER_MESSAGE_PROPERTIES:
                props[key] = "<id>"
    return queues, task_ids


def test_batch_publishes_exactly_what_send_task_publishes(producer, rclient) -> None:  # type: ignore[no-untyped-def]
    """Breaks if routing.envelope builds messages differently from Celery's send_task through
    the router (other queue, exchange, routing key, priority, headers, argsrepr, kwargs,
    serializer, body encoding; e.g. after a Celery upgrade changes the protocol), if send()
    and dispatch_batch differ, or if a batch reorders messages within a shard."""
    messages = _messages()

    sent_ids = [send(producer, m).task_id for m in messages]
    by_send, send_task_ids = _normalise(_drain(rclient))
    _forget_dedup(rclient)

    for m in messages:
        producer.send_task(m.task_name, args=(m.user_id, m.text), kwargs=m.task_kwargs())
    by_send_task, _ = _normalise(_drain(rclient), ours=False)

    batch_ids = [r.task_id for r in dispatch_batch(producer, messages)]
    by_batch, batch_task_ids = _normalise(_drain(rclient))

    assert set(by_batch) == {shard_queue(s) for s in range(SHARDS)}, "users span all shards"
    assert by_batch == by_send
    assert by_batch == by_send_task
    # The normalised ids are the ones the callers got back, in order, one per message.
    assert sorted(batch_task_ids) == sorted(batch_ids) and len(set(batch_ids)) == len(messages)
    assert sorted(send_task_ids) == sorted(sent_ids)
    # Spot-check that the comparison saw real content, not two empty structures.
    first = by_batch[next(iter(sorted(by_batch)))][0]
    assert first["properties"]["delivery_info"]["routing_key"].startswith(SHARD_QUEUE_PREFIX)
    assert first["body"][1]["seq"] is not None


def test_batch_keeps_each_users_order(producer, rclient) -> None:  # type: ignore[no-untyped-def]
    """Breaks if the batch publishes out of input order (a user's messages would be answered
    in the wrong order)."""
    messages = _messages()
    dispatch_batch(producer, messages)
    seen: dict[str, list[int]] = {}
    for envelopes in _drain(rclient).values():
        for env in envelopes:
            args, kwargs, _ = env["body"]
            seen.setdefault(str(args[0]), []).append(kwargs["seq"])
    expected: dict[str, list[int]] = {}
    for m in messages:
        expected.setdefault(str(m.user_id), []).append(m.extra["seq"])
    assert seen == expected


def test_bad_message_in_batch_publishes_nothing(producer, rclient) -> None:  # type: ignore[no-untyped-def]
    """Breaks if a batch is published up to its bad message (half a batch would be answered
    and its retry would answer those messages twice)."""
    good = [dataclasses.replace(m, message_id=None) for m in _messages()[:10]]
    send(producer, good[0])  # warm: queues declared, connection open
    _drain(rclient)
    rclient.config_resetstat()

    for bad in (ChatMessage(True, "x"), ChatMessage("", "x"), ChatMessage(None, "x")):  # type: ignore[arg-type]
        with pytest.raises(InvalidUserId):
            dispatch_batch(producer, [*good, bad, *good])
    with pytest.raises(InvalidDispatch):
        dispatch_batch(producer, [*good, ChatMessage(1, "x" * 10_000_000)])
    # A bad id only the routing sees (a user_id keyword wins over the first argument): the
    # build raises at message 11, before anything is sent.
    with pytest.raises(InvalidUserId):
        dispatch_batch(producer, [*good, ChatMessage(3, "x", extra={"user_id": -1})])

    assert rclient.keys(f"{SHARD_QUEUE_PREFIX}*") == []
    assert "cmdstat_lpush" not in rclient.info("commandstats")
    # The control: the same good messages alone are published.
    assert len(dispatch_batch(producer, good)) == 10
    assert sum(rclient.llen(q) for q in rclient.keys(f"{SHARD_QUEUE_PREFIX}*")) == 10


# ---- one round trip -------------------------------------------------------------------------


def _calls(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(stat["calls"])
            for name, stat in client.info("commandstats").items()}


def test_batch_of_200_is_one_round_trip(redis_server, redis_url, rclient) -> None:  # type: ignore[no-untyped-def]
    """Breaks if the batch waits for a reply between messages: a call per message instead of
    one script call for the batch, a per-message lookup (e.g. kombu's SMEMBERS of an exchange
    binding table), or a round trip before the publish (a separate dedup claim or sequence
    number). All 200 LPUSHes must reach Redis while the proxy lets no reply through, from one
    EVALSHA that is the only command sent."""
    gate = ReplyGate(redis_server.port)
    app = producer_for(f"redis://127.0.0.1:{gate.port}/0")
    result: dict[str, Any] = {}
    try:
        # Warm: connection open, every shard queue declared (one-off per producer and queue).
        dispatch_batch(app, [ChatMessage(u, "warm") for u in range(40)])
        _drain(rclient)
        batch = [ChatMessage(u % 50, f"msg {u}") for u in range(200)]
        rclient.config_resetstat()
        before = _calls(rclient)  # counts this INFO call itself

        gate.open.clear()
        thread = threading.Thread(target=lambda: result.update(ids=dispatch_batch(app, batch)))
        thread.start()
        try:
            wait_until(lambda: _calls(rclient).get("lpush", 0) >= 200, 30,
                       what="all 200 LPUSHes to reach Redis with replies held back")
            assert thread.is_alive(), "the producer finished without any reply"
        finally:
            gate.open.set()
            thread.join(30)
        assert not thread.is_alive()
        after = _calls(rclient)
    finally:
        app.close()
        gate.close()

    assert len(result["ids"]) == 200 and not any(r.duplicate for r in result["ids"])
    assert before == {"config": 1}
    sent = {name: n - before.get(name, 0) for name, n in after.items()}
    sent = {name: n for name, n in sent.items() if n and name not in ("info", "config")}
    # One script call; the commands it ran inside Redis: the shard-map epoch check, then a
    # number and a push per message.
    assert sent == {"evalsha": 1, "hmget": 1, "hincrby": 200, "lpush": 200}, sent
    assert sum(rclient.llen(q) for q in rclient.keys(f"{SHARD_QUEUE_PREFIX}*")) == 200


def test_reply_gate_control_send_waits_per_message(redis_server, redis_url, rclient) -> None:  # type: ignore[no-untyped-def]
    """The control: send() one message at a time waits for each reply, so with replies held
    back only its first LPUSH can reach Redis. If more got through, the gate would not be
    holding replies and the round-trip test above could not fail."""
    gate = ReplyGate(redis_server.port)
    app = producer_for(f"redis://127.0.0.1:{gate.port}/0")
    try:
        for u in range(40):
            send(app, ChatMessage(u, "warm"))
        rclient.config_resetstat()
        gate.open.clear()
        thread = threading.Thread(target=lambda: [send(app, ChatMessage(u, "x"))
                                                  for u in range(20)])
        thread.start()
        try:
            wait_until(lambda: _calls(rclient).get("lpush", 0) >= 1, 30, what="first LPUSH")
            threading.Event().wait(1.0)  # room for a second LPUSH, if one could be sent
            assert _calls(rclient).get("lpush", 0) == 1
        finally:
            gate.open.set()
            thread.join(30)
        assert _calls(rclient).get("lpush", 0) == 20
    finally:
        app.close()
        gate.close()


def test_failed_batch_leaves_no_dedup_claims(producer, rclient) -> None:  # type: ignore[no-untyped-def]
    """Breaks if a batch that fails its checks leaves dedup claims behind (e.g. claims made in
    a round trip before the build): nothing was published, yet resending the corrected batch
    would report every message as a duplicate and publish none of them: silently lost."""
    good = _messages()[:10]
    with pytest.raises(InvalidUserId):
        dispatch_batch(producer, [*good, ChatMessage(3, "x", extra={"user_id": -1})])
    assert rclient.keys(f"{SHARD_QUEUE_PREFIX}*") == []
    results = dispatch_batch(producer, good)
    assert not any(r.duplicate for r in results)
    assert sum(rclient.llen(q) for q in rclient.keys(f"{SHARD_QUEUE_PREFIX}*")) == 10


def test_each_user_gets_dense_sequence_numbers(producer, rclient) -> None:  # type: ignore[no-untyped-def]
    """Breaks if the per-user sequence number (the worker's order alarm) is not given in
    publish order, skips or repeats a number, is used up by a duplicate, or is shared between
    users; and if the envelope does not carry the number the producer was told."""
    first = send(producer, ChatMessage(1, "a", message_id="one"))
    batch = dispatch_batch(producer, [ChatMessage(2, "b"), ChatMessage(1, "c"),
                                      ChatMessage("1", "dup", message_id="one"),
                                      ChatMessage(1, "d"), ChatMessage(2, "e")])
    assert [first.seq] + [r.seq for r in batch] == [1, 1, 2, None, 3, 2]
    carried = {}
    for envelopes in _drain(rclient).values():
        for env in envelopes:
            carried[env["headers"]["id"]] = env["headers"][SEQ_HEADER]
    expected = {r.task_id: r.seq for r in [first, *batch] if not r.duplicate}
    assert carried == expected
    assert rclient.hgetall(keys.USER_SEQ) == {"1": "3", "2": "2"}
