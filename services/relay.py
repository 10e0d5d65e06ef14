"""The Telegram relay: delivers outbox replies to the Bot API, in order for each user.

It owns the consumer group :data:`routing.keys.RELAY_GROUP` on the outbox feed
(:data:`routing.keys.OUTBOX_FEED`, one ``user``/``id`` pointer per outbox entry, in delivery
order) and the hash :data:`routing.keys.RELAY_DELIVERED` (user -> last outbox id sent).

Delivery is at least once and in feed order per user:

- each round re-reads this consumer's own pending entries first (``XREADGROUP ... 0``),
  then new ones (``>``), and sends them in stream order;
- an entry is acknowledged only after Telegram answered ``{"ok": true}``; on any failure it
  stays pending, and the user's later entries in the same round are held back behind it,
  so nothing overtakes it; other users go on;
- before sending, an entry at or below the user's ``RELAY_DELIVERED`` id is acknowledged
  without sending: a relay that died between Telegram's answer and its ``XACK`` does not
  send it again on restart (only a crash between those two can still duplicate).

Within Telegram's limits (:mod:`services.relay_pacing`): a chat gets about one request per
second, all chats together at most 30 per second, and a chat answered 429 gets nothing
before its ``retry_after`` has passed, then the same message again. A chat that must wait
holds back only its own user's entries (they stay pending, in order); other chats go on.
A 429 is flow control, not a failure: it does not slow the relay's retry backoff.

Run exactly one relay per deployment (one consumer name): a consumer group spreads entries
over its consumers, so two relays would race for one user's messages.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from typing import Any, cast

import httpx
import redis

from routing import keys
from routing.replication import NotReplicated, replicated, replicated_within_budget
from services.relay_pacing import ChatPacer

log = logging.getLogger(__name__)

#: Default consumer name; a restarted relay with the same name resumes its pending entries.
DEFAULT_CONSUMER = "relay"
_INT_ID = re.compile(r"-?\d+")

Entry = tuple[str, dict[str, str]]


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class _RedactToken(logging.Filter):
    """Takes the bot token out of httpx's request log lines (the token is in the URL)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.token in message:
            record.msg, record.args = message.replace(self.token, "<token>"), ()
        return True


def _retry_after_s(response: httpx.Response) -> float:
    """A 429's ``parameters.retry_after`` (seconds); one interval if it gives none."""
    try:
        retry_after = response.json().get("parameters", {}).get("retry_after")
    except (ValueError, AttributeError):
        retry_after = None
    if isinstance(retry_after, int | float) and not isinstance(retry_after, bool):
        return max(float(retry_after), 0.0)
    return 1.0


def chat_id_of(value: str) -> int | str:
    """Telegram chat ids are integers; ``@channel`` names and other strings pass through."""
    return int(value) if _INT_ID.fullmatch(value) else value


class TelegramRelay:
    def __init__(self, client: redis.Redis, token: str, api_base: str, *,
                 consumer: str = DEFAULT_CONSUMER, batch: int = 100, timeout_s: float = 30.0,
                 retry_max_s: float = 30.0, pacer: ChatPacer | None = None,
                 wait_replicas: int = 0, wait_timeout_ms: int = 1000) -> None:
        if not token:
            raise ValueError("a Telegram bot token is required")
        self.redis = client
        self.token = token
        self.url = f"{api_base.rstrip('/')}/bot{token}/sendMessage"
        self.consumer = consumer
        self.batch = batch
        self.retry_max_s = retry_max_s
        #: REDIS_WAIT_REPLICAS: entries are sent only once the read (a write: it moves them
        #: into this consumer's pending list) is on this many replicas, and with it every
        #: commit that wrote them, so a failover cannot take back a reply already sent.
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.http = httpx.Client(timeout=timeout_s)
        self._redact = _RedactToken(token)
        logging.getLogger("httpx").addFilter(self._redact)
        self.pacer = pacer or ChatPacer()
        #: Entries that failed in the last round (they stay pending and are retried).
        self.failed = 0
        #: Entries held back in the last round because their chat must wait (pace or 429).
        self.deferred = 0
        self._group_ready = False

    # ---- Redis side -----------------------------------------------------------------------

    def ensure_group(self) -> None:
        """Create the consumer group at the feed's start (and the feed) if missing."""
        try:
            self.redis.xgroup_create(keys.OUTBOX_FEED, keys.RELAY_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _read(self, start: str, block_ms: int | None) -> list[Entry]:
        def read(client: Any) -> Any:
            return client.xreadgroup(keys.RELAY_GROUP, self.consumer, {keys.OUTBOX_FEED: start},
                                     count=self.batch, block=block_ms)

        try:
            if self.wait_replicas:
                [reply] = replicated(self.redis, read, self.wait_replicas, self.wait_timeout_ms)
            else:
                reply = read(self.redis)
        except NotReplicated as exc:
            # Not sent: the entries stay pending and are read again next round (or, if the
            # failover lost them, delivered afresh from the new master).
            log.warning("relay: outbox entries not yet replicated, holding them (%s)", exc)
            self.failed = 1
            return []
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()  # the feed was deleted under us (e.g. FLUSHALL)
            return []
        if not reply:
            return []
        streams = cast(Any, reply)
        if isinstance(streams, dict):  # RESP3 clients answer with a mapping
            return list(next(iter(streams.values()))[0])
        return list(streams[0][1])

    def _pending(self) -> list[Entry]:
        """This consumer's unacknowledged entries, oldest first (paged through)."""
        entries: list[Entry] = []
        after = "0"
        while page := self._read(after, None):
            entries += page
            after = page[-1][0]
            if len(page) < self.batch:
                break
        return entries

    def _outbox_entry(self, user: str, entry_id: str) -> dict[str, str] | None:
        found = cast(list[Entry], self.redis.xrange(keys.outbox(user), entry_id, entry_id))
        return found[0][1] if found else None

    def _already_delivered(self, user: str, entry_id: str) -> bool:
        last = cast(str | None, self.redis.hget(keys.RELAY_DELIVERED, user))
        return last is not None and _stream_id(entry_id) <= _stream_id(last)

    def _ack(self, feed_id: str, user: str | None = None, entry_id: str | None = None) -> None:
        if self.wait_replicas:
            self._replicated_ack(feed_id, user, entry_id)
            return
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(keys.OUTBOX_FEED, keys.RELAY_GROUP, feed_id)
            if user is not None and entry_id is not None:
                pipe.hset(keys.RELAY_DELIVERED, user, entry_id)
            pipe.execute()

    def _replicated_ack(self, feed_id: str, user: str | None, entry_id: str | None) -> None:
        """The ack, sent again until replicated: an ack a failover takes back would send the
        entry again. The delivered mark goes first; a replica holds a prefix of what the master
        wrote, so it never has the XACK without the mark."""
        def write(pipe: Any) -> None:
            if user is not None and entry_id is not None:
                pipe.hset(keys.RELAY_DELIVERED, user, entry_id)
            pipe.xack(keys.OUTBOX_FEED, keys.RELAY_GROUP, feed_id)

        replicated_within_budget(self.redis, write, self.wait_replicas, self.wait_timeout_ms)

    # ---- Telegram side ----------------------------------------------------------------------

    def _send(self, chat_id: int | str, text: str) -> bool | None:
        """POST sendMessage: True for an HTTP 2xx answer with ``{"ok": true}``, None for a
        429 (the chat waits its ``retry_after``), False for any other failure."""
        chat = str(chat_id)
        time.sleep(self.pacer.overall_wait_s())
        try:
            response = self.http.post(self.url, json={"chat_id": chat_id, "text": text})
        except httpx.HTTPError as exc:
            self.pacer.answered(chat)
            # httpx messages contain the URL, and so the token: never log it.
            log.warning("sendMessage failed: %s", str(exc).replace(self.token, "<token>"))
            return False
        if response.status_code == 429:
            retry_after = _retry_after_s(response)
            self.pacer.answered(chat, retry_after)
            log.info("sendMessage to chat %s: 429, resending after %.0f s", chat, retry_after)
            return None
        self.pacer.answered(chat)
        try:
            ok = response.is_success and response.json().get("ok") is True
        except ValueError:
            ok = False
        if not ok:
            log.warning("sendMessage answered HTTP %d: %.200s", response.status_code,
                        response.text.replace(self.token, "<token>"))
        return ok

    # ---- the loop -----------------------------------------------------------------------------

    def _deliver(self, entries: list[Entry], blocked: set[str]) -> int:
        delivered = 0
        for feed_id, fields in entries:
            user, entry_id = (fields or {}).get("user"), (fields or {}).get("id")
            if not user or not entry_id:
                log.error("feed entry %s has no user/id (%r); dropped", feed_id, fields)
                self._ack(feed_id)
                continue
            if user in blocked:
                continue  # stays pending behind the user's failed entry
            if self._already_delivered(user, entry_id):
                self._ack(feed_id)
                continue
            entry = self._outbox_entry(user, entry_id)
            if entry is None:
                log.error("outbox entry %s of user %s is gone; skipped", entry_id, user)
                self._ack(feed_id)
                continue
            chat_id = chat_id_of(entry.get("chat_id") or user)
            if self.pacer.chat_wait_s(str(chat_id)) > 0:
                blocked.add(user)  # its chat must wait: this and the user's later entries
                self.deferred += 1
                continue
            sent = self._send(chat_id, entry.get("text", ""))
            if sent:
                self._ack(feed_id, user, entry_id)
                delivered += 1
                continue
            blocked.add(user)
            if sent is None:
                self.deferred += 1
            else:
                self.failed += 1
        return delivered

    def run_once(self, block_ms: int = 0) -> int:
        """One round: pending entries, then new ones (waiting up to ``block_ms`` for new ones
        when nothing was pending). Returns how many messages Telegram accepted."""
        if not self._group_ready:
            self.ensure_group()
        self.failed = self.deferred = 0
        blocked: set[str] = set()
        pending = self._pending()
        delivered = self._deliver(pending, blocked)
        wait = block_ms if block_ms > 0 and not pending else None
        due_s = self.pacer.next_due_s()
        if pending and not delivered and not self.failed and due_s is not None:
            # Every pending entry waits for its chat: wait for new entries until the first
            # chat is due (new ones of other chats end the wait at once), at most a second or
            # ``block_ms``, so a stop request is never kept waiting for a long retry_after.
            wait = max(math.ceil(min(due_s * 1000, max(block_ms, 1000))), 1)
        delivered += self._deliver(self._read(">", wait), blocked)
        return delivered

    def run_forever(self, stop_event: threading.Event, block_ms: int = 1000) -> None:
        """Rounds until ``stop_event`` is set; after a failed round, waits with capped
        exponential backoff before retrying."""
        backoff = 0.0
        while not stop_event.is_set():
            try:
                self.run_once(block_ms)
            except redis.ConnectionError as exc:
                log.warning("relay lost Redis: %s", exc)
                self.failed = 1
            if self.failed:
                backoff = min(max(backoff * 2, 0.1), self.retry_max_s)
                stop_event.wait(backoff)
            else:
                backoff = 0.0

    def close(self) -> None:
        self.http.close()
        logging.getLogger("httpx").removeFilter(self._redact)
