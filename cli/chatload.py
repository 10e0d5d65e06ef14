"""A simulated chat load and the per-user order check used by the demo, the tests and bench.

Every message carries ``seq``, its index in the user's stream of ordered messages. A user's
outbox is in order when its ``seq`` values are exactly ``0, 1, 2, ...``; anything else is
counted as missing, duplicated or out of order.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis

from routing import ChatMessage, keys


def chat_load(users: list[int | str], messages: int, *, proactive_every: int = 0,
              seed: int = 0) -> list[list[ChatMessage]]:
    """Rounds of messages: in each round every user sends its next message, users shuffled.

    A proactive message follows every ``proactive_every``-th user message.
    """
    rng = random.Random(seed)
    seq = {user: 0 for user in users}
    rounds: list[list[ChatMessage]] = []
    for n in range(messages):
        batch: list[ChatMessage] = []
        order = list(users)
        rng.shuffle(order)
        for user in order:
            batch.append(_message(user, f"message {n} from {user}", seq, proactive=False))
            if proactive_every and (n + 1) % proactive_every == 0:
                batch.append(_message(user, f"reminder after {n} for {user}", seq, proactive=True))
        rounds.append(batch)
    return rounds


def _message(user: int | str, text: str, seq: dict[int | str, int], *,
             proactive: bool) -> ChatMessage:
    message = ChatMessage(user, text, message_id=f"{user}-{seq[user]}", sent_at=time.time(),
                          proactive=proactive, extra={"seq": seq[user]})
    seq[user] += 1
    return message


def stamp(batch: Iterable[ChatMessage]) -> list[ChatMessage]:
    """The same messages with ``sent_at`` set to now (call right before publishing)."""
    now = time.time()
    return [ChatMessage(m.user_id, m.text, message_id=m.message_id, chat_id=m.chat_id,
                        sent_at=now, proactive=m.proactive, extra=m.extra) for m in batch]


@dataclass
class OrderReport:
    expected: int = 0
    answered: int = 0
    missing: int = 0
    duplicated: int = 0
    violations: int = 0
    latencies_s: list[float] = field(default_factory=list)
    bad_users: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.duplicated == 0 and self.violations == 0

    def percentile(self, p: float) -> float:
        return percentile(self.latencies_s, p)


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile of ``values`` (nearest rank below), NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(p / 100 * len(ordered)), len(ordered) - 1)]


def check_order(client: redis.Redis, expected: dict[str, int], *,
                number: str = "seq") -> OrderReport:
    """Compare each user's outbox with ``expected`` (user -> number of ordered messages); each
    entry's place in its user's order is its field ``number`` (0, 1, ...)."""
    report = OrderReport()
    for user, count in expected.items():
        report.expected += count
        entries: list[tuple[str, dict[str, str]]] = client.xrange(  # type: ignore[assignment]
            keys.outbox(user))
        seqs = [int(fields[number]) for _, fields in entries if number in fields]
        report.answered += len(set(seqs))
        report.duplicated += len(seqs) - len(set(seqs))
        report.missing += count - len(set(seqs) & set(range(count)))
        report.violations += sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b <= a)
        for _, fields in entries:
            if "sent_at" in fields and "delivered_at" in fields:
                report.latencies_s.append(float(fields["delivered_at"]) - float(fields["sent_at"]))
        if seqs != list(range(count)):
            report.bad_users.append(user)
    return report


def delivered_count(client: redis.Redis) -> int:
    """Outbox entries written so far, over all users."""
    return int(client.xlen(keys.OUTBOX_FEED))


def delivered_to(client: redis.Redis, users: Iterable[str]) -> int:
    """Outbox entries written so far to ``users`` (one round trip)."""
    with client.pipeline(transaction=False) as pipe:
        for user in users:
            pipe.xlen(keys.outbox(user))
        return sum(int(n) for n in pipe.execute())
