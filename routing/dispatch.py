"""Publishing ordered messages: one at a time or in batches, one Redis round trip either way.

Producers hold a Celery *client* app built from ``celeryconfig`` (:func:`producer_app`); it
knows no task code and sends by task name, so importing this module never imports the worker.
Every message is routed by the router's rules (``routing.router``) and checked before
anything is sent. A message with a ``message_id`` is published at most once per user within
``DEDUP_WINDOW_S``; each published message gets the user's next sequence number
(``routing.publish``). While Redis is unreachable a publish is retried for ``PUBLISH_RETRY_S``,
then :class:`PublishFailed` is raised. Never set a queue, priority or ETA here (docs/ordering.md).

Messages are routed with the deployment's shard map (``routing.shardmap``) as read from the
app's Redis, and the publish script refuses a batch routed under an epoch that is no longer
current, telling the new epoch and count: the batch is re-routed under them at once. So a
producer sees a rescale at its very next publish, and needs no periodic read of the map (one
round trip per batch, as before). An app whose ``task_routes`` is a pinned ``ShardRouter(n)``
routes with ``n`` shards and is not fenced.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from celery import Celery
from kombu.exceptions import OperationalError
from kombu.utils.uuid import uuid

from routing import keys
from routing.credentials import auth_message, auth_problem, redact_url
from routing.envelope import USER_HEADER, EnvelopeBuilder
from routing.errors import InvalidDispatch, PublishFailed, RedisAuthFailed
from routing.hashing import shard_for
from routing.payload import check_payload, task_body
from routing.publish import Outgoing, Published, PublishScript, StaleEpoch
from routing.queues import ORDERED_TASKS, SEND_AI_RESPONSE, SEND_PROACTIVE_MESSAGE, shard_queue
from routing.router import ShardRouter, user_id_of
from routing.shardmap import ShardMap, ShardMapCache
from routing.userid import canonical_user_id

T = TypeVar("T")


#: Producer apps of this process by (name, broker URL), with the pid that built them: building
#: a Celery app costs milliseconds (configuration, kombu setup), more than a send itself.
_producer_apps: dict[tuple[str, str], tuple[int, Celery]] = {}
_producer_apps_lock = threading.Lock()


def producer_app(name: str = "shardline-producer", broker_url: str | None = None) -> Celery:
    """The process's Celery app for publishing only, configured from ``celeryconfig``, on
    ``broker_url`` (default: celeryconfig's). One app per name and broker URL per process:
    call it per send at no cost. A forked child builds its own, never sharing the parent's
    connections. Configure a copy of your own (``Celery(...)``) rather than changing this one.
    """
    import celeryconfig

    url = broker_url or str(celeryconfig.broker_url)
    with _producer_apps_lock:
        cached = _producer_apps.get((name, url))
        if cached is not None and cached[0] == os.getpid():
            return cached[1]
        app = Celery(name)
        app.config_from_object("celeryconfig")
        app.conf.broker_url = url
        _producer_apps[(name, url)] = (os.getpid(), app)
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

    def task_args(self) -> tuple[int | str, str]:
        return (self.user_id, self.text)

    def task_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "message_id": self.message_id,
            "chat_id": self.chat_id,
            "sent_at": self.sent_at,
        }
        kwargs.update(self.extra)
        return kwargs


def validate(message: ChatMessage, max_payload_bytes: int) -> None:
    """Raise before publishing when ``message`` could not be answered: a bad user id, a bad
    text, or a body the worker would refuse as over ``max_payload_bytes``."""
    _check_message(message)
    check_payload(task_body(message.task_args(), message.task_kwargs()), max_payload_bytes)


def _check_message(message: ChatMessage) -> None:
    canonical_user_id(message.user_id)
    _check_text(message.text)


def _check_text(text: object) -> None:
    if not isinstance(text, str):
        raise InvalidDispatch(f"text must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: no worker could store or send it
        raise InvalidDispatch(f"text must be valid Unicode text, got "
                              f"{exc.object[exc.start:exc.end]!r} at index {exc.start}") from None


def max_payload_bytes() -> int:
    """The worker's payload limit (``MAX_PAYLOAD_BYTES``), which producers check before sending."""
    import celeryconfig

    return celeryconfig.settings.max_payload_bytes


@dataclass(frozen=True)
class DispatchResult:
    """What happened to one message: published, or recognised as a duplicate and not sent."""

    #: The message's task id; for a duplicate, the task id of the first dispatch.
    task_id: str
    duplicate: bool = False
    #: The user's sequence number given to this message (``None`` for a duplicate).
    seq: int | None = None

    @classmethod
    def of(cls, published: Published) -> DispatchResult:
        return cls(published.task_id, duplicate=published.seq is None, seq=published.seq)


#: Errors that mean "the broker is unreachable right now": retried within the budget.
RETRYABLE: tuple[type[BaseException], ...] = (
    OperationalError, redis.ConnectionError, redis.TimeoutError, ConnectionError,
)


def with_publish_retry(app: Celery, what: str, fn: Callable[[], T],
                       budget_s: float | None = None) -> T:
    """Run ``fn``, retrying with capped exponential backoff while Redis is unreachable.

    After ``budget_s`` (``PUBLISH_RETRY_S``) of failures it raises :class:`PublishFailed`;
    refused credentials raise :class:`RedisAuthFailed` at once.
    """
    import celeryconfig

    budget = celeryconfig.settings.publish_retry_s if budget_s is None else budget_s
    deadline = time.monotonic() + budget
    attempts = 0
    while True:
        attempts += 1
        try:
            return fn()
        except Exception as exc:
            url = str(app.conf.broker_url)
            if problem := auth_problem(exc):
                raise RedisAuthFailed(f"could not {what}: {auth_message(url, problem)}") from exc
            if not isinstance(exc, RETRYABLE):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise PublishFailed(
                    f"could not {what}: the broker at {redact_url(url)} was unreachable for "
                    f"{budget:g}s (PUBLISH_RETRY_S), {attempts} attempts; last error: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            time.sleep(min(left, 0.05 * 2 ** min(attempts, 5)))


#: Re-routes of one batch after stale-epoch refusals before giving up (each one means the map
#: changed again between two round trips: only a runaway rescale loop gets near this).
MAX_REROUTES = 16


@dataclass(frozen=True)
class _Publisher:
    builder: EnvelopeBuilder
    script: PublishScript
    #: The deployment's shard map in the app's Redis.
    maps: ShardMapCache


_publishers: weakref.WeakKeyDictionary[Celery, _Publisher] = weakref.WeakKeyDictionary()


def _pinned_router(app: Celery) -> ShardRouter | None:
    """The app's own pinned ``ShardRouter`` (``task_routes = (ShardRouter(n),)``), if any."""
    routes = app.conf.task_routes
    first = routes[0] if isinstance(routes, (list, tuple)) and routes else routes
    return first if isinstance(first, ShardRouter) and first.pinned else None


def _publisher(app: Celery) -> _Publisher:
    import celeryconfig

    publisher = _publishers.get(app)
    if publisher is None:
        settings = celeryconfig.settings
        client = redis.Redis.from_url(str(app.conf.broker_url), socket_timeout=10,
                                      socket_connect_timeout=2)
        publisher = _Publisher(
            EnvelopeBuilder(app, max_payload_bytes=settings.max_payload_bytes),
            PublishScript(client, settings.dedup_window_s),
            # Never expires: the publish script says when it is stale (see _publish_routed).
            ShardMapCache(client, settings.shard_count, refresh_s=math.inf))
        _publishers[app] = publisher
    return publisher


def _outgoing(builder: EnvelopeBuilder, name: str, args: tuple[Any, ...],
              kwargs: dict[str, Any], shard_map: ShardMap, task_id: str, *,
              message_id: str | None = None, numbered: bool = True,
              headers: dict[str, Any] | None = None) -> Outgoing:
    """One ordered task routed to its user's shard under ``shard_map``, ready to publish;
    claimed under ``message_id`` if given, numbered unless it is a control message."""
    user_id = user_id_of(args, kwargs)  # as the router reads it: a user_id keyword wins
    user = canonical_user_id(user_id)
    queue = shard_queue(shard_for(user_id, shard_map.count))
    _, envelope = builder.build(name, args, kwargs, queue=queue, task_id=task_id,
                                epoch=shard_map.epoch, numbered=numbered,
                                headers={**(headers or {}), USER_HEADER: user})
    claim = keys.dedup(user, message_id) if message_id is not None else None
    return Outgoing(user=user, queue=queue, task_id=task_id, envelope=envelope, claim_key=claim)


def _publish_routed(app: Celery, route: Callable[[EnvelopeBuilder, ShardMap], list[Outgoing]],
                    ) -> list[Published]:
    """Route a batch under the current map (``route`` builds it) and publish it; on a
    stale-epoch refusal (nothing was sent) read the map again and re-route, so no message is
    published under an old map."""
    publisher = _publisher(app)
    pinned = _pinned_router(app)
    for _ in range(MAX_REROUTES):
        shard_map = pinned.shard_map() if pinned else publisher.maps.current()
        outgoing = route(publisher.builder, shard_map)
        try:
            return publisher.script(outgoing, shard_map.epoch, shard_map.count)
        except StaleEpoch as stale:
            if stale.count is None:
                publisher.maps.refresh()
            else:
                publisher.maps.adopt(ShardMap(stale.count, stale.current))
    raise PublishFailed(f"the shard map changed {MAX_REROUTES} times while publishing "
                        f"{len(outgoing)} message(s)")


def dispatch_batch(app: Celery, messages: Iterable[ChatMessage]) -> list[DispatchResult]:
    """Publish many ordered messages in one Redis round trip (``routing.publish``).

    Each message is the envelope Celery's ``send_task`` would publish through the router
    (``routing.envelope``), plus its publish time and the user's sequence number. All
    messages are checked and built before anything is sent, so a bad one leaves nothing
    half-sent. A message whose ``message_id`` was dispatched before (same user, within
    ``DEDUP_WINDOW_S``) is not published again and comes back with ``duplicate=True``.
    Celery's ``before/after_task_publish`` signals do not fire for these messages.
    """
    batch = list(messages)
    for message in batch:
        _check_message(message)  # and the payload size as each is built
    task_ids = [uuid() for _ in batch]

    def route(builder: EnvelopeBuilder, shard_map: ShardMap) -> list[Outgoing]:
        return [_outgoing(builder, m.task_name, m.task_args(), m.task_kwargs(), shard_map,
                          task_id, message_id=m.message_id)
                for m, task_id in zip(batch, task_ids, strict=True)]

    published = with_publish_retry(app, f"publish {len(batch)} message(s)",
                                   lambda: _publish_routed(app, route))
    return [DispatchResult.of(p) for p in published]


def send(app: Celery, message: ChatMessage) -> DispatchResult:
    """Publish one ordered message (or recognise a duplicate): see :func:`dispatch_batch`."""
    return dispatch_batch(app, [message])[0]


def send_ordered(app: Celery, name: str, args: tuple[Any, ...] | list[Any],
                 kwargs: dict[str, Any], *, task_id: str | None = None,
                 headers: dict[str, Any] | None = None) -> DispatchResult:
    """Publish one ordered task by name as a user's message, exactly as :func:`send` would
    publish it: checked, epoch-fenced, numbered, and claimed under its ``message_id`` keyword
    (a duplicate is not sent and comes back with the first dispatch's task id).
    ``OrderedTask.apply_async`` (and so ``delay``) publishes through this."""
    if name not in ORDERED_TASKS:
        raise InvalidDispatch(f"{name} is not an ordered task")
    text = args[1] if len(args) > 1 else kwargs.get("text")
    if text is not None:  # the user id and the payload size are checked as it is built
        _check_text(text)
    message_id = kwargs.get("message_id")
    return DispatchResult.of(_publish_one(
        app, name, args, kwargs, task_id=task_id or uuid(), headers=headers, numbered=True,
        message_id=None if message_id is None else str(message_id)))


def publish_task(app: Celery, name: str, args: list[Any], kwargs: dict[str, Any], *,
                 headers: dict[str, Any] | None = None, task_id: str | None = None) -> str:
    """Publish one task by name (replays, control tasks, notices that carry a fixed
    ``task_id`` so the worker's done-marker drops a resend); its task id.

    An ordered task goes to its user's shard through the publish script, epoch-fenced like
    :func:`dispatch_batch` but not numbered and not claimed (its task id is its identity).
    Any other task (a replayed workload task) goes through ``send_task`` and the router.
    """
    task_id = task_id or uuid()
    if name not in ORDERED_TASKS:
        with_publish_retry(app, f"publish {name}", lambda: app.send_task(
            name, args=args, kwargs=kwargs, task_id=task_id, headers=headers or {},
            retry=False))
        return task_id
    _publish_one(app, name, args, kwargs, task_id=task_id, headers=headers, numbered=False,
                 message_id=None)
    return task_id


def _publish_one(app: Celery, name: str, args: tuple[Any, ...] | list[Any],
                 kwargs: dict[str, Any], *, task_id: str, headers: dict[str, Any] | None,
                 numbered: bool, message_id: str | None) -> Published:
    def route(builder: EnvelopeBuilder, shard_map: ShardMap) -> list[Outgoing]:
        return [_outgoing(builder, name, tuple(args), kwargs, shard_map, task_id,
                          message_id=message_id, numbered=numbered, headers=headers)]

    [published] = with_publish_retry(app, f"publish {name}", lambda: _publish_routed(app, route))
    return published
