"""Publishing ordered messages: one at a time or in batches of one Redis round trip.

Producers hold a Celery *client* app built from ``celeryconfig`` (:func:`producer_app`); it
knows no task code and sends by task name, so importing this module never imports the worker.
Every message goes through the router (``task_routes``) and so through its checks. A
message with a ``message_id`` is published at most once per user within ``DEDUP_WINDOW_S``
(``routing.dedup``). While Redis is unreachable a publish is retried for ``PUBLISH_RETRY_S``,
then :class:`PublishFailed` is raised. Never set a queue, priority or ETA here (ORDERING.md).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from celery import Celery
from kombu.exceptions import OperationalError
from kombu.utils.uuid import uuid

from routing.dedup import Claim, DedupStore
from routing.errors import InvalidDispatch, PublishFailed
from routing.queues import SEND_AI_RESPONSE, SEND_PROACTIVE_MESSAGE
from routing.userid import canonical_user_id

T = TypeVar("T")


def producer_app(name: str = "shardline-producer") -> Celery:
    """A Celery app for publishing only, configured from ``celeryconfig``."""
    app = Celery(name)
    app.config_from_object("celeryconfig")
    return app


@dataclass(frozen=True)
class ChatMessage:
    """One ordered message for a user: a chat message to answer or a proactive message."""

    user_id: int | str
    text: str
    message_id: str | None = None
    chat_id: int | str | None = None
    sent_at: float | None = None
    proactive: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def task_name(self) -> str:
        return SEND_PROACTIVE_MESSAGE if self.proactive else SEND_AI_RESPONSE

    def task_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "message_id": self.message_id,
            "chat_id": self.chat_id,
            "sent_at": self.sent_at,
        }
        kwargs.update(self.extra)
        return kwargs


def validate(message: ChatMessage, max_text_bytes: int) -> None:
    """Raise before publishing when ``message`` could not be answered."""
    canonical_user_id(message.user_id)
    if not isinstance(message.text, str):
        raise InvalidDispatch(f"text must be a str, got {type(message.text).__name__}")
    size = len(message.text.encode("utf-8"))
    if size > max_text_bytes:
        raise InvalidDispatch(f"text is {size} bytes, over the limit of {max_text_bytes} bytes")


def max_text_bytes() -> int:
    """Longest text a producer may send, in UTF-8 bytes."""
    import celeryconfig

    # Leave room for the envelope (headers, base64 body) under the worker's payload limit.
    return celeryconfig.settings.max_payload_bytes // 2


@dataclass(frozen=True)
class DispatchResult:
    """What happened to one message: published, or recognised as a duplicate and not sent."""

    #: The message's task id; for a duplicate, the task id of the first dispatch.
    task_id: str
    duplicate: bool = False


#: Errors that mean "the broker is unreachable right now": retried within the budget.
RETRYABLE: tuple[type[BaseException], ...] = (
    OperationalError, redis.ConnectionError, redis.TimeoutError, ConnectionError,
)


def with_publish_retry(app: Celery, what: str, fn: Callable[[], T],
                       budget_s: float | None = None) -> T:
    """Run ``fn``, retrying with capped exponential backoff while Redis is unreachable.

    After ``budget_s`` (``PUBLISH_RETRY_S``) of failures it raises :class:`PublishFailed`.
    """
    import celeryconfig

    budget = celeryconfig.settings.publish_retry_s if budget_s is None else budget_s
    deadline = time.monotonic() + budget
    attempts = 0
    while True:
        attempts += 1
        try:
            return fn()
        except RETRYABLE as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PublishFailed(
                    f"could not {what}: the broker at {_safe_url(app)} was unreachable for "
                    f"{budget:g}s (PUBLISH_RETRY_S), {attempts} attempts; last error: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            time.sleep(min(left, 0.05 * 2 ** min(attempts, 5)))


def _safe_url(app: Celery) -> str:
    url = str(app.conf.broker_url or "")
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


_dedup_stores: weakref.WeakKeyDictionary[Celery, DedupStore] = weakref.WeakKeyDictionary()


def _dedup(app: Celery) -> DedupStore:
    import celeryconfig

    store = _dedup_stores.get(app)
    if store is None:
        client = redis.Redis.from_url(str(app.conf.broker_url), socket_timeout=10,
                                      socket_connect_timeout=2)
        store = DedupStore(client, celeryconfig.settings.dedup_window_s)
        _dedup_stores[app] = store
    return store


def _claims(batch: list[ChatMessage], ids: list[str]) -> list[tuple[int, Claim]]:
    return [(i, Claim(canonical_user_id(m.user_id), m.message_id, ids[i]))
            for i, m in enumerate(batch) if m.message_id is not None]


def dispatch_batch(app: Celery, messages: Iterable[ChatMessage]) -> list[DispatchResult]:
    """Publish many ordered messages in one Redis round trip (kombu's ``Producer.batch``).

    Every message is exactly what :func:`send` would publish. All messages are checked
    before any is published, so a bad one leaves nothing half-sent. A message whose
    ``message_id`` was dispatched before (same user, within ``DEDUP_WINDOW_S``) is not
    published again and comes back with ``duplicate=True``; the claims are one more
    pipelined round trip.
    """
    batch = list(messages)
    limit = max_text_bytes()
    for message in batch:
        validate(message, limit)
    ids = [uuid() for _ in batch]
    results = [DispatchResult(task_id) for task_id in ids]
    claims = _claims(batch, ids)
    if claims:
        store = _dedup(app)
        outcome = with_publish_retry(app, "claim message ids",
                                     lambda: store.claim_many([c for _, c in claims]))
        for (i, _), claimed in zip(claims, outcome, strict=True):
            if not claimed.first:
                results[i] = DispatchResult(claimed.task_id, duplicate=True)
    to_send = [(m, r.task_id) for m, r in zip(batch, results, strict=True) if not r.duplicate]

    def publish() -> None:
        if not to_send:
            return
        with app.producer_or_acquire() as producer, producer.batch(max_size=len(to_send)):
            for message, task_id in to_send:
                app.send_task(message.task_name, args=(message.user_id, message.text),
                              kwargs=message.task_kwargs(), task_id=task_id,
                              producer=producer, retry=False)

    try:
        with_publish_retry(app, f"publish {len(to_send)} message(s)", publish)
    except Exception:  # PublishFailed, or the router refusing a message: nothing was sent
        ours = [c for i, c in claims if not results[i].duplicate]
        try:
            _dedup(app).release(ours)
        except RETRYABLE:
            pass  # Redis is down: the claims expire after DEDUP_WINDOW_S
        raise
    return results


def send(app: Celery, message: ChatMessage) -> DispatchResult:
    """Publish one ordered message (or recognise a duplicate): see :func:`dispatch_batch`."""
    return dispatch_batch(app, [message])[0]


def publish_task(app: Celery, name: str, args: list[Any], kwargs: dict[str, Any], *,
                 headers: dict[str, Any] | None = None, task_id: str | None = None) -> str:
    """Publish one task by name through the router (replays, control tasks, notices that
    carry a fixed ``task_id`` so the worker's done-marker drops a resend); its task id."""
    validate_user = kwargs.get("user_id", args[0] if args else None)
    canonical_user_id(validate_user)
    task_id = task_id or uuid()
    with_publish_retry(app, f"publish {name}", lambda: app.send_task(
        name, args=args, kwargs=kwargs, task_id=task_id, headers=headers or {}, retry=False))
    return task_id
