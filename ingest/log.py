"""The ingest log: every message the HTTP API accepted, in arrival order (a Redis stream).

It is the memory catch-up reads at start (:mod:`ingest.catchup`). An entry is written after
the publish, with the task id it got, or with no task id when the broker was unreachable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Protocol

import redis

from routing import keys

#: Entries kept in the stream (approximately); older ones are trimmed.
MAX_ENTRIES = 1_000_000


@dataclass(frozen=True)
class IngestedMessage:
    user_id: str
    chat_id: str
    message_id: str
    text: str
    #: When the user sent it (epoch seconds), as the messenger reported it.
    sent_at: float
    #: Task id of its dispatch; empty when the publish failed.
    task_id: str = ""


class MessageSource(Protocol):
    """Where catch-up finds past messages."""

    def messages_since(self, after: float) -> Iterator[IngestedMessage]:
        """Messages that arrived after ``after`` (epoch seconds), oldest arrival first."""
        ...


class IngestLog:
    """The Redis-stream :class:`MessageSource`, written by the API."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def append(self, message: IngestedMessage) -> str:
        fields = {k: str(v) for k, v in asdict(message).items()}
        return str(self.redis.xadd(keys.INGEST_LOG, fields,  # type: ignore[arg-type]
                                   maxlen=MAX_ENTRIES, approximate=True))

    def messages_since(self, after: float) -> Iterator[IngestedMessage]:
        # Stream ids are arrival times in ms; a message arrives after it is sent, so
        # nothing sent after ``after`` has an id below it.
        cursor = str(max(int(after * 1000), 0))
        while True:
            batch: list[tuple[str, dict[str, str]]] = self.redis.xrange(  # type: ignore[assignment]
                keys.INGEST_LOG, min=cursor, max="+", count=1000)
            for _entry_id, f in batch:
                yield IngestedMessage(user_id=f["user_id"], chat_id=f["chat_id"],
                                      message_id=f["message_id"], text=f["text"],
                                      sent_at=float(f["sent_at"]), task_id=f.get("task_id", ""))
            if len(batch) < 1000:
                return
            cursor = "(" + batch[-1][0]
