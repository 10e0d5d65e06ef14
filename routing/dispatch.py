"""Publishing ordered messages: one at a time or in batches of one Redis round trip.

Producers hold a Celery *client* app built from ``celeryconfig`` (:func:`producer_app`); it
knows no task code and sends by task name, so importing this module never imports the worker.
Every message goes through the router (``task_routes``) and so through its checks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from routing.errors import InvalidDispatch
from routing.queues import SEND_AI_RESPONSE, SEND_PROACTIVE_MESSAGE
from routing.userid import canonical_user_id


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


def _max_text_bytes(app: Celery) -> int:
    import celeryconfig

    # Leave room for the envelope (headers, base64 body) under the worker's payload limit.
    return celeryconfig.settings.max_payload_bytes // 2


def send(app: Celery, message: ChatMessage) -> str:
    """Publish one ordered message; returns its task id."""
    validate(message, _max_text_bytes(app))
    result = app.send_task(message.task_name, args=(message.user_id, message.text),
                           kwargs=message.task_kwargs())
    return str(result.id)


def dispatch_batch(app: Celery, messages: Iterable[ChatMessage]) -> list[str]:
    """Publish many ordered messages in one Redis round trip (kombu's ``Producer.batch``).

    Every message is exactly what :func:`send` would publish. All messages are checked
    before any is published, so a bad one leaves nothing half-sent.
    """
    batch = list(messages)
    limit = _max_text_bytes(app)
    for message in batch:
        validate(message, limit)
    ids: list[str] = []
    with app.producer_or_acquire() as producer, producer.batch(max_size=max(len(batch), 1)):
        for message in batch:
            result = app.send_task(message.task_name, args=(message.user_id, message.text),
                                   kwargs=message.task_kwargs(), producer=producer)
            ids.append(str(result.id))
    return ids
