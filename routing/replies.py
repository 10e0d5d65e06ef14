"""Reading Redis replies that may come as ``bytes`` or ``str``.

Clients built with ``decode_responses=True`` return ``str``; kombu's and the raw ones return
``bytes``. Code that accepts either client reads replies through these two helpers.
"""

from __future__ import annotations

from typing import Any


def as_text(value: object) -> str:
    """``value`` as text: bytes are decoded as UTF-8, anything else goes through ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


def text_map(raw: dict[Any, Any]) -> dict[str, str]:
    """A hash reply with its keys and values as text."""
    return {as_text(k): as_text(v) for k, v in raw.items()}
