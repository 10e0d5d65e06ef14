"""Catch-up of missed messages: the window's boundaries, duplicates, order, the Redis log."""

from __future__ import annotations

from collections.abc import Iterator

from ingest.catchup import select_missed
from ingest.log import IngestedMessage, IngestLog

START = 1_700_000_000.0
WINDOW = 300.0


class ListSource:
    """An in-memory MessageSource (the protocol's second implementation)."""

    def __init__(self, messages: list[IngestedMessage]) -> None:
        self.messages = messages

    def messages_since(self, after: float) -> Iterator[IngestedMessage]:
        return iter(self.messages)


def msg(mid: str, sent_at: float, chat: str = "c1", task_id: str = "") -> IngestedMessage:
    return IngestedMessage(user_id="7", chat_id=chat, message_id=mid, text=f"t{mid}",
                           sent_at=sent_at, task_id=task_id or f"task-{mid}")


def pick(messages: list[IngestedMessage], done: set[str] | None = None) -> list[str]:
    source = ListSource(messages)
    chosen = select_missed(source.messages_since(START - WINDOW), start=START,
                           window_s=WINDOW,
                           processed=lambda m: m.message_id in (done or set()))
    return [m.message_id for m in chosen]


def test_window_is_open_at_its_start_and_closed_at_start_time():
    """Breaks if a message sent exactly at start - window is replayed (the bound is
    exclusive), if one sent exactly at start is not (inclusive), or if one from the future
    or from before the window is replayed."""
    messages = [msg("at-window-edge", START - WINDOW), msg("just-inside", START - WINDOW + 0.001),
                msg("at-start", START), msg("future", START + 0.001), msg("old", START - 10_000)]
    assert pick(messages) == ["just-inside", "at-start"]


def test_duplicates_and_processed_messages_are_skipped_and_order_is_oldest_first():
    """Breaks if the same (chat id, message id) is queued twice, if an answered message is
    queued again, if equal message ids in different chats are merged, or if the order is
    arrival order instead of sent_at order."""
    messages = [msg("b", START - 5), msg("a", START - 50), msg("b", START - 4),
                msg("a", START - 40, chat="c2"), msg("done", START - 30)]
    assert pick(messages, done={"done"}) == ["a", "a", "b"]
    chosen = select_missed(messages, start=START, window_s=WINDOW, processed=lambda m: False)
    assert [(m.chat_id, m.message_id) for m in chosen] == [
        ("c1", "a"), ("c2", "a"), ("c1", "done"), ("c1", "b")]


def test_ingest_log_returns_what_the_api_appended(rclient):
    """Breaks if the Redis ingest log loses fields or returns entries that arrived before
    the requested time."""
    log = IngestLog(rclient)
    first = msg("x", START - 1)
    log.append(first)
    assert list(log.messages_since(0)) == [first]
    import time

    assert list(log.messages_since(time.time() + 60)) == []
