"""The Telegram relay against a real local server speaking the Bot API's sendMessage JSON.

Outbox entries come from services.conversation.ConversationStore.commit (what the workers
call) or from real shard workers. The server records every request and whether it answered
ok, so the tests check what Telegram would have shown each chat: every message once, in the
user's outbox order, even when the server fails in between.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from deploy.launcher import PROJECT_DIR, child_env
from routing import ChatMessage, dispatch_batch, keys
from services.conversation import ConversationStore
from services.relay import TelegramRelay
from services.relay_pacing import ChatPacer
from tests.fake_http import FakeJSONServer, Request
from tests.harness import wait_until

TOKEN = "123456:TEST-relay-token"


class FakeTelegram:
    """Bot API ``sendMessage`` on a local FakeJSONServer; ``fail(request, n)`` may return an
    error status for a request (n counts earlier requests), else it is accepted. With
    ``retry_after``, a 429 answer carries ``parameters.retry_after`` as Telegram's does."""

    def __init__(self, fail: Callable[[Request, int], int | None] = lambda r, n: None, *,
                 retry_after: int | None = None) -> None:
        self.fail = fail
        self.retry_after = retry_after
        self.lock = threading.Lock()
        #: (chat_id, text, accepted) per request, in arrival order.
        self.log: list[tuple[Any, str, bool]] = []
        #: (received_at, chat_id, text, HTTP status) per request, in arrival order.
        self.timeline: list[tuple[float, Any, str, int]] = []
        self.server = FakeJSONServer(self.respond)

    def respond(self, request: Request, earlier: int) -> tuple[int, Any]:
        if request.path != f"/bot{TOKEN}/sendMessage":
            return 404, {"ok": False, "error_code": 404, "description": "Not Found"}
        chat_id, text = request.body["chat_id"], request.body["text"]
        status = self.fail(request, earlier)
        with self.lock:
            self.log.append((chat_id, text, status is None))
            self.timeline.append((request.received_at, chat_id, text, status or 200))
        if status == 429 and self.retry_after is not None:
            return 429, {"ok": False, "error_code": 429,
                         "description": f"Too Many Requests: retry after {self.retry_after}",
                         "parameters": {"retry_after": self.retry_after}}
        if status is not None:
            return status, {"ok": False, "error_code": status, "description": "try later"}
        return 200, {"ok": True, "result": {"message_id": earlier + 1, "date": 1700000000,
                                            "chat": {"id": chat_id, "type": "private"},
                                            "text": text}}

    def delivered(self) -> dict[Any, list[str]]:
        """Texts each chat received (accepted requests only), in order."""
        out: dict[Any, list[str]] = {}
        with self.lock:
            for chat_id, text, ok in self.log:
                if ok:
                    out.setdefault(chat_id, []).append(text)
        return out

    def attempts(self) -> dict[Any, list[str]]:
        out: dict[Any, list[str]] = {}
        with self.lock:
            for chat_id, text, _ in self.log:
                out.setdefault(chat_id, []).append(text)
        return out

    def __enter__(self) -> FakeTelegram:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)


def _store(client: redis.Redis) -> ConversationStore:
    return ConversationStore(client, history_limit=50, done_ttl_s=3600)


def _commit(store: ConversationStore, user: str, text: str, chat_id: Any = None) -> str:
    entry_id = store.commit(user, uuid.uuid4().hex, [{"role": "assistant", "text": text}],
                            {"kind": "proactive", "text": text, "chat_id": chat_id})
    assert entry_id is not None
    return entry_id


#: user -> chat id the relay must use (None: the user id itself, as an int if numeric)
CHATS: dict[str, Any] = {"alice": 1001, "42": None, "bob": "-100200"}
EXPECTED_CHAT = {"alice": 1001, "42": 42, "bob": -100200}


def _commit_interleaved(client: redis.Redis, per_user: int) -> dict[str, list[str]]:
    store = _store(client)
    texts: dict[str, list[str]] = {}
    for i in range(per_user):
        for user, chat in CHATS.items():
            text = f"{user} #{i}"
            _commit(store, user, text, chat)
            texts.setdefault(user, []).append(text)
    return texts


def _rounds_until(relay: TelegramRelay, total: int, max_rounds: int = 1000) -> int:
    delivered = 0
    for _ in range(max_rounds):
        delivered += relay.run_once(0)
        if delivered >= total:
            return delivered
    raise AssertionError(f"only {delivered} of {total} delivered after {max_rounds} rounds")


def _assert_done(client: redis.Redis) -> None:
    """Nothing pending, and each user's delivered marker is its last outbox entry."""
    assert client.xpending(keys.OUTBOX_FEED, keys.RELAY_GROUP)["pending"] == 0
    for user in client.hkeys(keys.RELAY_DELIVERED):
        last = client.xrevrange(keys.outbox(user), count=1)[0][0]
        assert client.hget(keys.RELAY_DELIVERED, user) == last


def test_relay_delivers_each_users_messages_in_order(rclient) -> None:  # type: ignore[no-untyped-def]
    """Breaks if the relay sends to the wrong URL or chat, drops, repeats or reorders a
    user's messages, or forgets to acknowledge / record what it delivered."""
    texts = _commit_interleaved(rclient, 10)
    with FakeTelegram() as tg:
        relay = TelegramRelay(rclient, TOKEN, tg.server.url + "/")
        try:
            assert _rounds_until(relay, 30) == 30
            assert relay.run_once(0) == 0  # nothing left, nothing sent twice
        finally:
            relay.close()
    assert {p.path for p in tg.server.recorded()} == {f"/bot{TOKEN}/sendMessage"}
    assert tg.delivered() == {EXPECTED_CHAT[u]: t for u, t in texts.items()}
    assert len(tg.log) == 30
    _assert_done(rclient)
    assert set(rclient.hkeys(keys.RELAY_DELIVERED)) == set(CHATS)


def test_relay_retries_failures_without_duplicates_or_reordering(rclient) -> None:  # type: ignore[no-untyped-def]
    """Breaks if a failed send is acknowledged (lost), if a later message of the same user is
    sent before a failed one is retried (reordered), or if a retry repeats a message that
    already went through (duplicated)."""
    texts = _commit_interleaved(rclient, 12)
    rng = random.Random(5)
    first_tries: dict[str, int] = {}

    def fail(request: Request, n: int) -> int | None:
        text = request.body["text"]
        first_tries[text] = first_tries.get(text, 0) + 1
        if text == "alice #3" and first_tries[text] <= 3:
            return 500
        if n == 0:
            return 502
        return rng.choice([500, 503, 429]) if rng.random() < 0.3 else None

    with FakeTelegram(fail) as tg:
        relay = TelegramRelay(rclient, TOKEN, tg.server.url)
        try:
            assert _rounds_until(relay, 36) == 36
            assert relay.run_once(0) == 0
        finally:
            relay.close()
    assert sum(1 for *_, ok in tg.log if not ok) >= 4, "the server should have failed often"
    assert tg.delivered() == {EXPECTED_CHAT[u]: t for u, t in texts.items()}
    # No overtaking: each user's attempts go 0, 1, 1, 2, ... never back, never skipping.
    for user, sent in tg.attempts().items():
        order = [int(text.rsplit("#", 1)[1]) for text in sent]
        assert all(b - a in (0, 1) for a, b in zip(order, order[1:], strict=False)), (user, order)
        assert order[0] == 0
    _assert_done(rclient)


def test_a_failing_user_does_not_hold_up_the_others(rclient) -> None:  # type: ignore[no-untyped-def]
    """Breaks if one user's failing message blocks everybody (the relay would stall on one
    bad chat) or if that user's later messages overtake it."""
    texts = _commit_interleaved(rclient, 4)
    down = threading.Event()
    down.set()

    def fail(request: Request, n: int) -> int | None:
        # Only alice's first message fails: her later ones must wait behind it.
        return 500 if down.is_set() and request.body["text"] == "alice #0" else None

    with FakeTelegram(fail) as tg:
        relay = TelegramRelay(rclient, TOKEN, tg.server.url)
        try:
            # Rounds until the others' 8 are in, counting the failures the relay saw (alice's
            # chat is tried at most once a second, so not every round has one).
            delivered = failures = 0
            for _ in range(1000):
                delivered += relay.run_once(0)
                failures += relay.failed
                if delivered >= 8:
                    break
            assert delivered == 8
            assert failures >= 1
            assert 1001 not in tg.delivered()
            assert rclient.xpending(keys.OUTBOX_FEED, keys.RELAY_GROUP)["pending"] == 4
            down.clear()
            assert _rounds_until(relay, 4) == 4
        finally:
            relay.close()
    assert tg.delivered() == {EXPECTED_CHAT[u]: t for u, t in texts.items()}
    _assert_done(rclient)


def test_restart_after_send_before_ack_does_not_resend(rclient) -> None:  # type: ignore[no-untyped-def]
    """Breaks if a relay restarted with entries pending re-sends one its predecessor had
    already delivered (RELAY_DELIVERED written, XACK lost), or skips one it had not."""
    store = _store(rclient)
    ids = [_commit(store, "alice", f"alice #{i}", 1001) for i in range(3)]
    with FakeTelegram() as tg:
        first = TelegramRelay(rclient, TOKEN, tg.server.url)
        first.ensure_group()
        # The predecessor read all three, delivered the first and died before its XACK.
        rclient.xreadgroup(keys.RELAY_GROUP, first.consumer, {keys.OUTBOX_FEED: ">"})
        rclient.hset(keys.RELAY_DELIVERED, "alice", ids[0])
        first.close()
        assert rclient.xpending(keys.OUTBOX_FEED, keys.RELAY_GROUP)["pending"] == 3
        restarted = TelegramRelay(rclient, TOKEN, tg.server.url)
        try:
            # Two rounds: the chat gets one message per second (services.relay_pacing).
            assert _rounds_until(restarted, 2) == 2
        finally:
            restarted.close()
    assert tg.delivered() == {1001: ["alice #1", "alice #2"]}
    _assert_done(rclient)


def test_relay_delivers_worker_replies_while_failing(producer, workers, rclient) -> None:  # type: ignore[no-untyped-def]
    """End to end: real shard workers answer, run_forever relays while the server fails a
    third of the time. Breaks if any reply is lost, repeated or reordered on the way from
    a worker's outbox to the chat, or if run_forever does not stop when asked."""
    users = ["alice", "bob", "7", "carol"]
    messages = [ChatMessage(u, f"q{i}", chat_id=None) for i in range(8) for u in users]
    rng = random.Random(9)
    lock = threading.Lock()

    def fail(request: Request, n: int) -> int | None:
        with lock:
            return 500 if rng.random() < 0.33 else None

    stop = threading.Event()
    with FakeTelegram(fail) as tg:
        relay = TelegramRelay(rclient, TOKEN, tg.server.url, retry_max_s=0.2)
        thread = threading.Thread(target=relay.run_forever, args=(stop,),
                                  kwargs={"block_ms": 200})
        thread.start()
        try:
            workers.start_shards(4, producer)
            dispatch_batch(producer, messages)
            wait_until(lambda: sum(len(v) for v in tg.delivered().values()) >= len(messages),
                       120, what="every reply relayed")
        finally:
            stop.set()
            thread.join(30)
            relay.close()
        assert not thread.is_alive()
    outboxes = {u: [f["text"] for _, f in rclient.xrange(keys.outbox(u))] for u in users}
    assert all(len(texts) == 8 for texts in outboxes.values())
    expected_chat = {"alice": "alice", "bob": "bob", "7": 7, "carol": "carol"}
    assert tg.delivered() == {expected_chat[u]: outboxes[u] for u in users}
    assert any(not ok for *_, ok in tg.log)
    _assert_done(rclient)


# ---- the command ------------------------------------------------------------------------------


def _cli(redis_url: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cli.main", "relay", "--block-ms", "200"],
                            env=child_env(redis_url, **env), cwd=PROJECT_DIR,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.mark.parametrize(("env", "complaint"), [
    ({"MESSENGER": "outbox", "TELEGRAM_BOT_TOKEN": TOKEN}, "MESSENGER"),
    ({"MESSENGER": "telegram", "TELEGRAM_BOT_TOKEN": ""}, "TELEGRAM_BOT_TOKEN"),
])
def test_relay_command_refuses_without_telegram(redis_url, env, complaint) -> None:  # type: ignore[no-untyped-def]
    """Breaks if `shardline relay` starts (and silently does nothing, or sends with an empty
    token) when it is not configured for Telegram."""
    proc = _cli(redis_url, **env)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert complaint in out.decode()


def test_relay_command_delivers_and_stops_on_sigterm(redis_url, rclient) -> None:  # type: ignore[no-untyped-def]
    """Breaks if the command is not registered, does not use TELEGRAM_API_BASE and the token,
    or does not stop cleanly on SIGTERM."""
    texts = _commit_interleaved(rclient, 3)
    with FakeTelegram() as tg:
        proc = _cli(redis_url, MESSENGER="telegram", TELEGRAM_BOT_TOKEN=TOKEN,
                    TELEGRAM_API_BASE=tg.server.url)
        try:
            wait_until(lambda: len(tg.log) >= 9 or proc.poll() is not None, 60,
                       what="the relay command to deliver")
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, out.decode()
    assert tg.delivered() == {EXPECTED_CHAT[u]: t for u, t in texts.items()}
    assert TOKEN not in out.decode()
    _assert_done(rclient)


# ---- Telegram's limits ------------------------------------------------------------------------


def _relay_until(relay: TelegramRelay, tg: FakeTelegram, total: int) -> None:
    """run_forever in a thread until the server accepted ``total`` messages."""
    stop = threading.Event()
    thread = threading.Thread(target=relay.run_forever, args=(stop,), kwargs={"block_ms": 200})
    thread.start()
    try:
        wait_until(lambda: sum(len(v) for v in tg.delivered().values()) >= total, 120,
                   what=f"{total} messages delivered")
    finally:
        stop.set()
        thread.join(30)
        relay.close()
    assert not thread.is_alive()


def test_a_429_is_resent_after_retry_after_in_order(rclient) -> None:  # type: ignore[no-untyped-def]
    """The server answers 429 with retry_after=3 to the first try of two messages. Breaks if
    the relay resends before retry_after has passed (measured between the server's own
    receipt times), sends the chat anything else first (reordered), drops or repeats a
    message, or gives a chat more than one request per second."""
    texts = _commit_interleaved(rclient, 4)
    throttled = {"alice #1", "bob #2"}
    tried: set[str] = set()

    def fail(request: Request, n: int) -> int | None:
        text = request.body["text"]
        if text in throttled and text not in tried:
            tried.add(text)
            return 429
        return None

    with FakeTelegram(fail, retry_after=3) as tg:
        _relay_until(TelegramRelay(rclient, TOKEN, tg.server.url), tg, 12)
    assert tg.delivered() == {EXPECTED_CHAT[u]: t for u, t in texts.items()}
    assert len(tg.log) == 12 + len(throttled)
    by_chat: dict[Any, list[tuple[float, str, int]]] = {}
    for at, chat, text, status in tg.timeline:
        by_chat.setdefault(chat, []).append((at, text, status))
    for chat, requests in by_chat.items():
        for (at, text, status), (next_at, next_text, _) in zip(requests, requests[1:],
                                                              strict=False):
            assert next_at - at >= 1.0, (chat, text, next_text, next_at - at)
            if status == 429:
                assert next_text == text, (chat, text, next_text)
                assert next_at - at >= 3.0, (chat, text, next_at - at)
    assert sum(1 for *_, status in tg.timeline if status == 429) == len(throttled)
    _assert_done(rclient)


def test_the_relay_keeps_to_the_overall_limit(rclient) -> None:  # type: ignore[no-untyped-def]
    """24 chats, one message each, through a pacer whose overall limit is 6 per second (the
    relay's default is Telegram's 30; on this machine one relay thread alone stays near that,
    so a lower limit is what shows the pacer at work). Breaks if more requests than the limit
    reach the server within one second: any 7 consecutive receipt times must span at least
    a second."""
    store = _store(rclient)
    for chat in range(24):
        _commit(store, f"u{chat}", f"u{chat} #0", 5000 + chat)
    limit = 6
    with FakeTelegram() as tg:
        relay = TelegramRelay(rclient, TOKEN, tg.server.url,
                              pacer=ChatPacer(overall_per_second=limit))
        _relay_until(relay, tg, 24)
    received = sorted(at for at, *_ in tg.timeline)
    assert len(received) == 24
    spans = [b - a for a, b in zip(received, received[limit:], strict=False)]
    assert min(spans) >= 1.0, min(spans)
    assert tg.delivered() == {5000 + chat: [f"u{chat} #0"] for chat in range(24)}
    _assert_done(rclient)
