"""A task's payload as the worker measures it: one home for the size check of both sides.

A worker dead-letters a message whose body is over ``MAX_PAYLOAD_BYTES``
(``tasks.consumer.preflight``). The body is kombu's JSON of ``[args, kwargs, embed]``, and
kombu escapes every non-ASCII character: an accented or CJK character takes 6 bytes
(``\\u00e9``), an emoji 12 (a surrogate pair), not its 2 to 4 bytes of UTF-8. A producer
builds the same body (:func:`task_body`, used by ``routing.envelope``) and checks it with
:func:`check_payload`, the check the worker runs, so it refuses exactly what a worker would
refuse, before anything is sent. This module measures; it never builds an envelope.
"""

from __future__ import annotations

from typing import Any

from kombu.utils.json import dumps

from routing.errors import InvalidDispatch

#: The embed part of a protocol-2 body, as Celery's ``send_task`` writes it.
EMBED: dict[str, None] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_body(args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> bytes:
    """The body a worker receives for a task called with ``args`` and ``kwargs``."""
    return dumps((args, kwargs, EMBED)).encode("utf-8")


def check_payload(body: bytes | str, max_payload_bytes: int) -> None:
    """Raise :class:`InvalidDispatch` if ``body`` is over ``max_payload_bytes``."""
    size = len(body)
    if size > max_payload_bytes:
        raise InvalidDispatch(f"payload of {size} bytes is over the limit of "
                              f"{max_payload_bytes} bytes (MAX_PAYLOAD_BYTES)")
