"""The worker's message gate: a poison message is dead-lettered, never run, never blocking.

Celery's own handling of a bad message is to log and drop (or reject) it. Here every message
passes :func:`preflight` before Celery sees it; a message that fails is parked in the
dead-letter store with the reason and acknowledged, and the worker takes the next one.
List items that kombu cannot even parse are caught earlier, in ``shardhost.transport``.
"""

from __future__ import annotations

import base64
import functools
import inspect
import logging
from typing import Any

from celery.worker.consumer import Consumer
from kombu.message import Message

import celeryconfig
from metrics.schema import UNKNOWN
from routing.errors import InvalidDispatch, InvalidUserId
from routing.payload import check_payload
from routing.queues import ORDERED_TASKS
from routing.router import user_id_of
from routing.userid import canonical_user_id
from services.deadletter import DeadLetter
from services.registry import services
from shardhost.transport import guarded_transport
from tasks.instrumentation import task_metrics

log = logging.getLogger(__name__)

class Poison(Exception):
    """Why a message cannot run; carries what is known of it for the dead-letter record."""

    def __init__(self, reason: str, **known: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.known = known


def _raw_text(message: Message) -> str:
    body = message.body
    if isinstance(body, bytes):
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(body).decode("ascii")
    return str(body)


def preflight(message: Message, tasks: Any, max_payload_bytes: int) -> None:
    """Raise :class:`Poison` if ``message`` cannot be run as a shardline task."""
    try:
        check_payload(message.body or b"", max_payload_bytes)  # the producer's check, too
    except InvalidDispatch as exc:
        raise Poison(str(exc)) from None
    headers = message.headers
    if not isinstance(headers, dict) or not isinstance(headers.get("task"), str):
        raise Poison("not a task message (no task header; only protocol 2 is accepted)")
    name = headers["task"]
    if name not in tasks:
        raise Poison(f"unknown task {name!r}", task=name)
    if message.content_type != "application/json":
        raise Poison(f"content type {message.content_type!r} is not application/json", task=name)
    try:
        body = message.decode()
    except Exception as exc:
        raise Poison(f"body is not valid JSON: {exc}", task=name) from None
    if not (isinstance(body, (list, tuple)) and len(body) == 3
            and isinstance(body[0], list) and isinstance(body[1], dict)):
        raise Poison("body is not [args, kwargs, embed]", task=name)
    args, kwargs = body[0], body[1]
    try:
        _signature(tasks[name]).bind(*args, **kwargs)
    except TypeError as exc:
        raise Poison(f"wrong arguments: {exc}", task=name, args=args, kwargs=kwargs) from None
    if name in ORDERED_TASKS:
        try:
            canonical_user_id(user_id_of(args, kwargs))
        except InvalidUserId as exc:
            raise Poison(f"invalid user id: {exc}", task=name, args=args, kwargs=kwargs) from None
        if headers.get("eta"):
            raise Poison("ordered task sent with an ETA/countdown", task=name, args=args,
                         kwargs=kwargs)


@functools.lru_cache(maxsize=256)
def _signature(task: Any) -> inspect.Signature:
    """``task``'s run signature, computed once: it cost more than the rest of the gate."""
    return inspect.signature(task.run)


class ShardlineConsumer(Consumer):
    """Celery's consumer with :func:`preflight` in front of every task message.

    It reads through :class:`shardhost.transport.GuardedTransport`, which dead-letters list items
    that are not even kombu envelopes (kombu itself would stop the worker on them).
    """

    def connection_for_read(self, heartbeat: Any = None) -> Any:
        return self.ensure_connected(
            self.app.connection_for_read(heartbeat=heartbeat,
                                       transport=guarded_transport(str(self.app.conf.broker_url))))

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().create_task_handler(*args, **kwargs)
        limit = celeryconfig.settings.max_payload_bytes

        def on_task_received(message: Message) -> Any:
            try:
                preflight(message, self.app.tasks, limit)
            except Poison as poison:
                self._dead_letter(message, poison.reason, **poison.known)
                return None
            return handle(message)

        return on_task_received

    def _dead_letter(self, message: Message, reason: str, **known: Any) -> None:
        dead_letter(self.app.tasks, message, reason, **known)
        message.ack()


def dead_letter(tasks: Any, message: Message, reason: str, **known: Any) -> None:
    """Park ``message`` in the dead-letter store with ``reason`` (the caller acks it)."""
    delivery = message.delivery_info or {}
    headers = message.headers if isinstance(message.headers, dict) else {}
    services().get("dead_letters").park(DeadLetter(
        reason=reason, queue=delivery.get("routing_key"), task_id=headers.get("id"),
        raw=_raw_text(message), **known,
    ))
    if recorder := task_metrics():
        task = known.get("task")
        recorder.dead_lettered(task if task in tasks else UNKNOWN, delivery.get("routing_key"))
    log.error("dead-lettered a message from %s: %s", delivery.get("routing_key"), reason)
