"""Canonical user ids: the one place that decides what a routable user id is.

The canonical form is what gets hashed. ``42`` and ``"42"`` are deliberately the same user
(ints are canonicalised with ``str(int)``), while ``"042"`` is a different one.
"""

from __future__ import annotations

from routing.errors import InvalidUserId

#: Longest accepted string user id, in characters.
MAX_USER_ID_CHARS = 256

UserId = int | str


def canonical_user_id(user_id: object) -> str:
    """Return the canonical string form of ``user_id`` or raise :class:`InvalidUserId`."""
    # bool is an int subclass; True would silently become user "1".
    if isinstance(user_id, bool) or user_id is None:
        raise InvalidUserId(f"user id must be an int >= 0 or a non-empty str, got {user_id!r}")
    if isinstance(user_id, int):
        if user_id < 0:
            raise InvalidUserId(f"user id must be an int >= 0, got {user_id!r}")
        return str(user_id)
    if isinstance(user_id, str):
        if not user_id:
            raise InvalidUserId("user id must be a non-empty str, got ''")
        if len(user_id) > MAX_USER_ID_CHARS:
            raise InvalidUserId(
                f"user id must be at most {MAX_USER_ID_CHARS} chars, got {len(user_id)} chars: "
                f"{user_id[:32]!r}..."
            )
        try:
            user_id.encode("utf-8")
        except UnicodeEncodeError as exc:
            # A lone surrogate ("\ud800"): valid JSON, but no Redis key or hash can hold it.
            raise InvalidUserId(
                f"user id must be valid Unicode text, got {user_id[:32]!r} with "
                f"{exc.object[exc.start:exc.end]!r} at index {exc.start}"
            ) from None
        return user_id
    raise InvalidUserId(
        f"user id must be an int >= 0 or a non-empty str, got {type(user_id).__name__} {user_id!r}"
    )
