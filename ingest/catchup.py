"""Catch-up at start: queue the messages of the last ``CATCHUP_WINDOW_S`` that were never
answered, oldest first, each through its user's shard.

A message qualifies when ``start - window < sent_at <= start``, it is the first entry of its
(chat id, message id), and its task's done-marker is absent. It is published again under its
original task id, so if the original is still queued the worker's done-marker makes the
second copy a no-op; it is never answered twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from celery import Celery

from ingest.log import IngestedMessage, MessageSource
from routing.dispatch import ChatMessage, publish_task, send, validate

#: ``message -> True`` when it was already answered.
Processed = Callable[[IngestedMessage], bool]


def select_missed(messages: Iterable[IngestedMessage], *, start: float, window_s: float,
                  processed: Processed) -> list[IngestedMessage]:
    """The messages catch-up must queue, oldest ``sent_at`` first (stable for ties)."""
    seen: set[tuple[str, str]] = set()
    missed: list[IngestedMessage] = []
    for message in sorted(messages, key=lambda m: m.sent_at):
        if not start - window_s < message.sent_at <= start:
            continue
        key = (message.chat_id, message.message_id)
        if key in seen:
            continue
        seen.add(key)
        if not processed(message):
            missed.append(message)
    return missed


def _chat_message(message: IngestedMessage) -> ChatMessage:
    user: int | str = int(message.user_id) if message.user_id.isdigit() else message.user_id
    return ChatMessage(user, message.text, message_id=message.message_id,
                       chat_id=message.chat_id, sent_at=message.sent_at)


def republish(app: Celery, message: IngestedMessage, max_payload_bytes: int) -> str:
    """Publish ``message`` again through the router; under its first task id if it had one."""
    chat = _chat_message(message)
    if not message.task_id:
        return send(app, chat).task_id  # its first publish failed, so its claim was released
    validate(chat, max_payload_bytes)
    return publish_task(app, chat.task_name, [chat.user_id, chat.text], chat.task_kwargs(),
                        task_id=message.task_id)


def catch_up(source: MessageSource, app: Celery, *, start: float, window_s: float,
             processed: Processed, max_payload_bytes: int) -> list[IngestedMessage]:
    """Queue the missed messages of the window; returns them in the order they were queued."""
    missed = select_missed(source.messages_since(start - window_s), start=start,
                           window_s=window_s, processed=processed)
    for message in missed:
        republish(app, message, max_payload_bytes)
    return missed
