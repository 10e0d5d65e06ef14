"""Bad input never blocks a shard: rejected at the producer, dead-lettered at the worker."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from cli.chatload import check_order
from routing import ChatMessage, InvalidUserId, ShardRouter, keys, send
from routing.queues import SEND_AI_RESPONSE
from services.deadletter import DeadLetterStore
from tests.harness import wait_until


@pytest.mark.parametrize("bad", [True, None, 1.5, -1, "", "x" * 257, [1]])
def test_producer_refuses_bad_user_ids_before_publishing(producer, rclient, bad):
    """Fails if a bad id reaches the broker (a shard list appears) or the error is not
    InvalidUserId naming the value."""
    with pytest.raises(InvalidUserId) as info:
        send(producer, ChatMessage(bad, "hello"))
    assert repr(bad)[:20] in str(info.value) or "chars" in str(info.value)
    assert not [k for k in rclient.keys("shard.*")]


def _template(producer, rclient) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A real envelope as Celery published it, taken off the queue before any worker runs."""
    send(producer, ChatMessage("template", "hello", extra={"seq": 0}))
    return json.loads(rclient.rpop("shard.0"))


def _variant(template: dict[str, Any], *, task: str | None = None, body: bytes | None = None,
             args: Any = None, kwargs: Any = None) -> str:
    envelope = json.loads(json.dumps(template))
    task_id = str(uuid.uuid4())
    envelope["headers"]["id"] = task_id
    envelope["properties"]["correlation_id"] = task_id
    envelope["properties"]["delivery_tag"] = str(uuid.uuid4())
    if task is not None:
        envelope["headers"]["task"] = task
    if body is None:
        body = json.dumps([args, kwargs or {}, {}]).encode()
    envelope["body"] = base64.b64encode(body).decode()
    return json.dumps(envelope)


def test_poison_messages_are_dead_lettered_and_the_shard_goes_on(producer, workers, rclient):
    """Fails if any poison message crashes or stalls the shard worker (a valid message after
    it is not answered), is silently dropped (no dead letter), or runs anyway."""
    producer.conf.task_routes = (ShardRouter(1),)
    template = _template(producer, rclient)
    valid = lambda n: _variant(template, args=["alice", f"valid {n}"],  # noqa: E731
                               kwargs={"seq": n})
    poison = [
        ("not valid JSON", _variant(template, body=b"{this is not json")),
        ("unknown task", _variant(template, task="shardline.no_such_task", args=[1, "x"])),
        ("wrong arguments", _variant(template, args=[], kwargs={})),
        ("wrong arguments", _variant(template, args=[1, "x", "extra"], kwargs={"bogus": 1})),
        ("over the limit", _variant(template, args=[1, "x" * (1024 * 1024 + 10)])),
        ("invalid user id", _variant(template, args=[True, "x"])),
        ("invalid user id", _variant(template, args=[-5, "x"])),
        ("not [args, kwargs, embed]", _variant(template, body=b'{"a": 1}')),
    ]
    queue: list[str] = []
    for n, (_, message) in enumerate(poison):
        queue += [valid(n), message]
    queue.append(valid(len(poison)))
    # LPUSH in order: the list's right end is the head, so the first pushed runs first.
    rclient.lpush("shard.0", *queue)
    workers.start_shard(0)
    wait_until(lambda: rclient.xlen(keys.OUTBOX_FEED) >= len(poison) + 1, 90,
               what="every valid message answered")
    report = check_order(rclient, {"alice": len(poison) + 1})
    assert report.ok, report
    letters = DeadLetterStore(rclient).list()
    assert len(letters) == len(poison)
    reasons = sorted(letter.reason for letter in letters)
    for expected, _ in poison:
        assert any(expected in reason for reason in reasons), (expected, reasons)
    assert workers.procs["shard-0"].poll() is None, "the shard worker must still run"
    assert SEND_AI_RESPONSE in {letter.task for letter in letters if letter.task}
