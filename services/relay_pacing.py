"""The relay's pace: within the Bot API's limits, and what a 429's ``retry_after`` asks.

Telegram documents about one message per second in a chat and about 30 per second overall;
past them it answers 429 with ``parameters.retry_after`` (seconds). :class:`ChatPacer` says
when each chat may get its next request and how long to wait before any request; it never
reorders anything (the relay decides what waits).

Every interval is measured from the moment the previous request was *answered*, not sent:
the server received it before that, so however long a request travels, two requests never
reach Telegram closer together than the limit. A small hand-written pacer rather than a rate
limiting library (``limits``, ``pyrate-limiter``): those count a hit when it is taken, ask
"may I now?" without saying until when, and have no way to push one key back by a server's
``retry_after``; the relay needs all three and runs in one thread, so this needs no lock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

#: About one message per second in a chat (Bot API FAQ).
PER_CHAT_INTERVAL_S = 1.0
#: About 30 messages per second overall (Bot API FAQ).
OVERALL_PER_SECOND = 30


class ChatPacer:
    def __init__(self, *, per_chat_interval_s: float = PER_CHAT_INTERVAL_S,
                 overall_per_second: int = OVERALL_PER_SECOND,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_chat_interval_s = per_chat_interval_s
        self.clock = clock
        #: Chat -> the earliest moment of its next request.
        self._next: dict[str, float] = {}
        #: When the last ``overall_per_second`` requests were answered, oldest first.
        self._answered: deque[float] = deque(maxlen=overall_per_second)

    def chat_wait_s(self, chat: str) -> float:
        """Seconds until ``chat`` may get its next request (0: now)."""
        return max(self._next.get(chat, 0.0) - self.clock(), 0.0)

    def overall_wait_s(self) -> float:
        """Seconds until any request may go out without a second holding more than the
        overall limit (0: now)."""
        if len(self._answered) < (self._answered.maxlen or 0):
            return 0.0
        return max(self._answered[0] + 1.0 - self.clock(), 0.0)

    def next_due_s(self) -> float | None:
        """Seconds until the first chat that is waiting may get a request; None if none
        waits."""
        now = self.clock()
        waits = [due - now for due in self._next.values() if due > now]
        return min(waits) if waits else None

    def answered(self, chat: str, retry_after_s: float = 0.0) -> None:
        """A request to ``chat`` was answered (or failed) just now; a 429 gives
        ``retry_after_s``."""
        now = self.clock()
        self._answered.append(now)
        self._next[chat] = now + max(self.per_chat_interval_s, retry_after_s)
        if len(self._next) > 10_000:  # forget chats whose wait is long over
            self._next = {c: due for c, due in self._next.items() if due > now}
