"""The worker's Redis transport: kombu's, with a gate for list items that are not envelopes.

kombu's ``Channel._brpop_read`` pops an item and parses it with ``json.loads`` before any
consumer code runs; an item that is not JSON, or JSON that is not a kombu envelope, raises
there, and Celery stops the worker ("Unrecoverable error: JSONDecodeError"). The popped item
is gone by then (it never reaches ``unacked``), so a supervisor restart loses it and the next
bad item crashes the worker again. Here the BRPOP reply is checked first: an item kombu could
not turn into a message is dead-lettered (``raw``) and the read reports "nothing arrived".

Only workers use this transport (``ShardlineConsumer.connection_for_read``); it must never
change what a valid envelope looks like to kombu.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

from services.deadletter import DeadLetter
from services.registry import services

log = logging.getLogger(__name__)


def envelope_problem(item: Any) -> str | None:
    """Why kombu could not deliver the raw list item ``item``, or ``None`` if it can."""
    try:
        text = item.decode("utf-8") if isinstance(item, bytes) else str(item)
    except UnicodeDecodeError:
        return "list item is not UTF-8"
    try:
        payload = json.loads(text)
    except ValueError as exc:
        return f"list item is not JSON: {exc}"
    if not isinstance(payload, dict):
        return f"list item is JSON {type(payload).__name__}, not a kombu envelope object"
    props = payload.get("properties")
    if not isinstance(props, dict):
        return "envelope has no properties object"
    if not isinstance(props.get("delivery_tag"), str):
        return "envelope has no delivery_tag string"
    info = props.get("delivery_info")
    if not (isinstance(info, dict) and isinstance(info.get("exchange"), str)
            and isinstance(info.get("routing_key"), str)):
        return "envelope has no delivery_info with exchange and routing_key"
    for name in ("content-type", "content-encoding"):
        if payload.get(name) is not None and not isinstance(payload[name], str):
            return f"envelope {name} is not a string"
    if payload.get("headers") is not None and not isinstance(payload["headers"], dict):
        return "envelope headers are not an object"
    body, encoding = payload.get("body"), props.get("body_encoding")
    if body and not isinstance(body, str):
        return "envelope body is not a string"
    if encoding not in (None, "base64"):
        return f"unknown body_encoding {encoding!r}"
    if body and encoding == "base64":
        try:
            base64.b64decode(body.encode("utf-8"))
        except ValueError as exc:
            return f"body is not valid base64: {exc}"
    return None


def _dead_letter(queue: str, item: Any, reason: str) -> None:
    raw = item.decode("utf-8", "backslashreplace") if isinstance(item, bytes) else str(item)
    try:
        services().get("dead_letters").park(DeadLetter(reason=reason, queue=queue, raw=raw))
    except Exception:  # the worker must survive even if the record cannot be written
        log.exception("could not dead-letter a bad item from %s", queue)
    log.error("dead-lettered a raw item from %s that kombu cannot read: %s", queue, reason)


class _GuardedRedis(redis.Redis):
    def parse_response(self, connection: Any, command_name: Any, **options: Any) -> Any:
        reply = super().parse_response(connection, command_name, **options)
        if command_name == "BRPOP" and reply:
            dest, item = reply
            problem = envelope_problem(item)
            if problem is not None:
                queue = dest.decode() if isinstance(dest, bytes) else str(dest)
                _dead_letter(queue, item, problem)
                return None  # kombu reads this as "nothing arrived" and polls again
        return reply


class GuardedChannel(kombu_redis.Channel):
    def _get_client(self) -> Any:
        client = super()._get_client()
        return client if self.global_keyprefix else _GuardedRedis


class GuardedTransport(kombu_redis.Transport):
    Channel = GuardedChannel
