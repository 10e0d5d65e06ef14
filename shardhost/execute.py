"""Run one message a shard host took, the way a Celery worker would run it, on this thread.

The same gate as every worker (``tasks.consumer.preflight``): a list item that is no kombu
envelope, or a message that cannot run, is dead-lettered and acked, never run and never
blocking the shard. A runnable message goes through Celery's own tracer (``trace_task``:
the task's request context, ``task_prerun``/``task_postrun`` signals, failure handling), so
a task cannot tell a host from a solo worker, except that its commits are fenced on the lease
of the shard it came from (``shardhost.fence``).
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from celery import Celery
from celery.app.trace import trace_task
from kombu.message import Message

import celeryconfig
from routing.envelope import USER_HEADER
from services.conversation import Fence
from shardhost.fence import running_under
from shardhost.transport import dead_letter_raw, envelope_problem, read_envelope
from tasks.consumer import Poison, dead_letter, preflight

log = logging.getLogger(__name__)


def user_of(payload: dict[str, Any] | None) -> str | None:
    """The ``shardline_user`` header of a parsed envelope (what ``take.lua`` reads), or None."""
    headers = (payload or {}).get("headers")
    user = headers.get(USER_HEADER) if isinstance(headers, dict) else None
    return user if isinstance(user, str) and user else None


def parse(raw: bytes) -> dict[str, Any] | None:
    """The envelope of ``raw``, or None when it is not one (it is dead-lettered on run)."""
    return read_envelope(raw)[0]


def as_message(payload: dict[str, Any], queue: str) -> Message:
    """A kombu message of an envelope, as kombu's Redis channel would deliver it."""
    props = payload["properties"]
    body: Any = payload.get("body") or b""
    if props.get("body_encoding") == "base64" and body:
        body = base64.b64decode(body)
    info = dict(props.get("delivery_info") or {})
    info.setdefault("routing_key", queue)
    info["priority"] = props.get("priority")
    return Message(body=body, delivery_tag=props.get("delivery_tag"),
                   content_type=payload.get("content-type"),
                   content_encoding=payload.get("content-encoding"),
                   delivery_info=info, properties=props, headers=payload.get("headers") or {})


def run_message(app: Celery, queue: str, raw: bytes, payload: dict[str, Any] | None, *,
                hostname: str, fence: Fence) -> None:
    """Run ``raw`` (taken from ``queue``) to its end; returns when it may be acked."""
    if payload is None:
        dead_letter_raw(queue, raw, envelope_problem(raw) or "not an envelope")
        return
    message = as_message(payload, queue)
    try:
        preflight(message, app.tasks, celeryconfig.settings.max_payload_bytes)
    except Poison as poison:
        dead_letter(app.tasks, message, poison.reason, **poison.known)
        return
    headers: dict[str, Any] = message.headers
    args, kwargs, embed = message.decode()
    props = payload["properties"]
    request = {
        **headers,
        "args": args, "kwargs": kwargs, "is_eager": False, "hostname": hostname,
        "reply_to": props.get("reply_to"), "correlation_id": props.get("correlation_id"),
        "delivery_info": message.delivery_info, "properties": props,
        **(embed or {}),
    }
    task = app.tasks[headers["task"]]
    with running_under(fence):
        trace_task(task, headers["id"], args, kwargs, request, app=app, hostname=hostname,
                   eager=False)
