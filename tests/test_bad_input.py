"""Bad input never blocks a shard: rejected at the producer, dead-lettered at the worker."""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from typing import Any

import pytest

import celeryconfig
from cli.chatload import check_order
from deploy.launcher import wait_for_workers
from routing import ChatMessage, InvalidDispatch, InvalidUserId, ShardRouter, keys, queue_for, send
from routing.envelope import SEQ_PLACEHOLDER, EnvelopeBuilder
from routing.queues import SEND_AI_RESPONSE, shard_of_queue
from services.deadletter import DeadLetterStore
from tests.harness import wait_until

#: A user on shard 0 of the fixtures' 4 shards.
SHARD0_USER = next(f"u{n}" for n in range(1000) if queue_for(f"u{n}", 4) == "shard.0")


@pytest.mark.parametrize("bad", [True, None, 1.5, -1, "", "x" * 257, [1], "\ud800x"])
def test_producer_refuses_bad_user_ids_before_publishing(producer, rclient, bad):
    """Fails if a bad id reaches the broker (a shard list appears) or the error is not
    InvalidUserId naming the value (a lone surrogate, "\ud800x", raised UnicodeEncodeError
    from the hash before routing.userid refused it)."""
    with pytest.raises(InvalidUserId) as info:
        send(producer, ChatMessage(bad, "hello"))
    assert repr(bad)[:20] in str(info.value) or "chars" in str(info.value)
    assert not [k for k in rclient.keys("shard.*")]


def test_producer_refuses_a_text_no_worker_could_store(producer, rclient):
    """Breaks if a text with a lone surrogate is published (the worker could never write it
    to Redis) or refused with anything but InvalidDispatch naming it (it was a
    UnicodeEncodeError from the size check)."""
    with pytest.raises(InvalidDispatch, match="valid Unicode"):
        send(producer, ChatMessage("u1", "hi \ud83d"))
    assert not rclient.keys("shard.*")


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


# ---- the payload limit: the producer refuses exactly what the worker refuses ----------------

#: A small MAX_PAYLOAD_BYTES, the same for the producer (this process) and the worker.
PAYLOAD_LIMIT = 65536
#: Bytes one character takes in the worker's body (kombu's JSON escapes non-ASCII).
WIDTHS = {"a": 1, "中": 6, "😀": 12}


def _outbox_texts(rclient, user: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [f["text"] for _, f in rclient.xrange(keys.outbox(user))]


def test_payload_limit_is_the_workers_for_ascii_emoji_and_cjk(producer, workers, rclient,
                                                               monkeypatch):
    """At MAX_PAYLOAD_BYTES, for ASCII, CJK and emoji texts: the longest text whose body the
    worker accepts is published and answered, one character more is refused at the producer
    with InvalidDispatch and nothing is queued. Breaks if the producer measures anything but
    the body the worker sees: the old check (UTF-8 bytes of the text against half the limit)
    refused the ASCII text the worker accepts and published emoji and CJK texts the worker
    then dead-lettered."""
    monkeypatch.setattr(celeryconfig, "settings", dataclasses.replace(
        celeryconfig.settings, max_payload_bytes=PAYLOAD_LIMIT))
    workers.env.update(MAX_PAYLOAD_BYTES=str(PAYLOAD_LIMIT))
    user, queue = SHARD0_USER, "shard.0"
    # The body's size without the text, measured on the wire: a probe taken off the queue.
    send(producer, ChatMessage(user, "p"))
    probe = json.loads(rclient.rpop(queue))
    empty_body = len(base64.b64decode(probe["body"])) - 1
    for queued, (char, width) in enumerate(WIDTHS.items()):
        longest = (PAYLOAD_LIMIT - empty_body) // width
        assert empty_body + longest * width <= PAYLOAD_LIMIT < empty_body + (longest + 1) * width
        with pytest.raises(InvalidDispatch, match="over the limit"):
            send(producer, ChatMessage(user, char * (longest + 1)))
        assert rclient.llen(queue) == queued, f"a refused {char!r} text was queued"
        assert send(producer, ChatMessage(user, char * longest)).seq
    workers.start_shard(0)
    wait_until(lambda: len(_outbox_texts(rclient, user)) == len(WIDTHS), 90,
               what="the three longest texts answered")
    replies = _outbox_texts(rclient, user)
    assert [r[len("re: ")] for r in replies] == list(WIDTHS)
    assert DeadLetterStore(rclient).list() == []


# ---- a user id no worker can store, and errors before the task body -------------------------


def _raw_push(producer, rclient, user: str, text: str, seq: int) -> None:  # type: ignore[no-untyped-def]
    """LPUSH a numbered send_ai_response onto shard 0, as routing builds one but with no
    producer check (EnvelopeBuilder without a limit; no publish script, no routing)."""
    _, envelope = EnvelopeBuilder(producer).build(SEND_AI_RESPONSE, (user, text), {},
                                                  queue="shard.0", epoch=0)
    rclient.lpush("shard.0", envelope.replace(SEQ_PLACEHOLDER, str(seq)))


def test_worker_dead_letters_a_lone_surrogate_user_id(producer, workers, rclient):
    """A message for user "\ud800x" (valid JSON, not encodable as UTF-8) published raw to a
    live shard worker is dead-lettered as an invalid user id and the next message is answered.
    Breaks if the gate lets it through (it then failed inside redis-py in the sequence check,
    and before the ordered task parked pre-body errors Celery acked it: no dead letter)."""
    _raw_push(producer, rclient, "\ud800x", "hello", 1)
    _raw_push(producer, rclient, SHARD0_USER, "after", 1)
    workers.start_shard(0)
    wait_until(lambda: _outbox_texts(rclient, SHARD0_USER), 60, what="the next message answered")
    [letter] = DeadLetterStore(rclient).list()
    assert "invalid user id" in letter.reason and "valid Unicode" in letter.reason, letter
    assert letter.task == SEND_AI_RESPONSE
    assert workers.procs["shard-0"].poll() is None


def test_an_error_before_the_task_body_dead_letters_the_message(producer, workers, rclient):
    """The order check raises (its Redis hash has the wrong type: WRONGTYPE): the message is
    parked with the error, not lost, and once the key is repaired the next one is answered.
    Breaks if an exception raised before the body (order check, done-marker, barrier, hold)
    propagates into Celery, which logs it and acknowledges the message: a silent drop."""
    user = SHARD0_USER
    shard = shard_of_queue(queue_for(user))
    workers.start_shard(0)
    wait_for_workers(producer, ["shard.0"])
    assert shard == 0
    rclient.set(keys.USER_STARTED_SEQ, "not a hash")
    send(producer, ChatMessage(user, "during the fault"))
    wait_until(lambda: DeadLetterStore(rclient).list(), 60, what="the message dead-lettered")
    [letter] = DeadLetterStore(rclient).list()
    assert letter.reason == "failed before it ran" and "WRONGTYPE" in str(letter.error), letter
    assert letter.args == [user, "during the fault"] and letter.attempts == 0
    rclient.delete(keys.USER_STARTED_SEQ)
    send(producer, ChatMessage(user, "after the repair"))
    wait_until(lambda: _outbox_texts(rclient, user), 60, what="the next message answered")
    assert _outbox_texts(rclient, user)[0].startswith("re: after the repair")
