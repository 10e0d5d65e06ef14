"""The bench's messages: many users, several messages each, spread over every shard."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace

from cli.chatload import chat_load
from routing import ChatMessage, shard_for


def backlog(users: int, per_user: int, *, prefix: str = "u", seed: int = 7) -> list[ChatMessage]:
    """``users * per_user`` ordered messages, rounds of shuffled users (as chat traffic)."""
    ids: list[int | str] = [f"{prefix}{n}" for n in range(users)]
    return [m for batch in chat_load(ids, per_user, seed=seed) for m in batch]


def retagged(messages: Sequence[ChatMessage], tag: str) -> list[ChatMessage]:
    """The same messages under new message ids: the producer publishes a (user, message id)
    only once per dedup window, so a second run over the same messages needs new ids."""
    return [replace(m, message_id=f"{tag}:{m.message_id}") for m in messages]


def expected_counts(messages: Sequence[ChatMessage]) -> dict[str, int]:
    """User -> number of messages, what :func:`cli.chatload.check_order` expects."""
    return dict(Counter(str(m.user_id) for m in messages))


def per_shard(messages: Sequence[ChatMessage], shard_count: int) -> list[int]:
    counts = Counter(shard_for(m.user_id, shard_count) for m in messages)
    return [counts.get(shard, 0) for shard in range(shard_count)]


def chunks(messages: Sequence[ChatMessage], size: int) -> Iterator[Sequence[ChatMessage]]:
    for start in range(0, len(messages), size):
        yield messages[start:start + size]
