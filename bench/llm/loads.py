"""The two loads every system takes: a burst and a live Poisson load.

Burst: ``users x per_user`` messages published at once, each user's in order, the users'
messages interleaved at random (a uniform shuffle of the whole burst that keeps each user's
order): some users' messages sit close together, as when someone sends several lines in a
row. Its rate is replies / (Redis clock at the last reply's feed entry - Redis clock just
before the first publish): both from the Redis server's clock.

Live: arrivals at ``rate`` per second (Poisson: exponential gaps) for ``duration_s``. A user
never writes again before their previous reply has arrived: each arrival's user is drawn at
random among the users of a large population with no message pending. So the latency measured
is the system's (waiting for a free slot, head-of-line blocking behind *other* users), never a
user's own queue of unanswered messages, which no system could shorten.

Latency of a message = ``delivered_at`` (stamped by the worker as it writes the reply) -
``sent_at`` (stamped right before it is published); one machine, one clock.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from bench.cpu import process_cpu_s
from bench.llm.systems import RunningSystem
from bench.load import expected_counts
from cli.chatload import OrderReport, check_order, percentile, stamp
from routing import ChatMessage, keys

#: No new reply for this long: the rest is counted missing.
STALL_S = 30.0
RSS_EVERY_S = 0.5


@dataclass(frozen=True)
class LoadResult:
    load: str  # "burst" or "live"
    messages: int
    seconds: float
    #: live only: the arrival rate asked for, and arrivals held back (no idle user).
    offered_rate: float
    deferred: int
    worker_cpu_s: float
    redis_cpu_s: float
    peak_rss_mb: float
    p50_ms: float
    p99_ms: float
    violations: int
    missing: int
    duplicated: int
    #: Messages started before their user's previous reply was written; None when the
    #: system does not stamp ``started_at`` (the real stack: it runs a user's messages one
    #: after another by construction, and its violations would show any break).
    overlaps: int | None = None

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def _redis_ms(system: RunningSystem) -> int:
    sec, usec = system.client.time()
    return int(sec) * 1000 + int(usec) // 1000


def _last_reply_ms(system: RunningSystem) -> int:
    info = system.client.xinfo_stream(keys.OUTBOX_FEED)
    return int(str(info["last-generated-id"]).split("-")[0])


class _Meter:
    """CPU of the system's workers and Redis from creation to :meth:`result`; peak RSS of the
    workers, sampled while the load runs."""

    def __init__(self, system: RunningSystem) -> None:
        self.system = system
        self.cpu0 = system.probe.cpu_s()
        self.redis0 = process_cpu_s(system.redis_pid)
        self.start_ms = _redis_ms(system)
        self.next_sample = 0.0
        system.probe.peak_rss_bytes = 0
        system.probe.sample()

    def tick(self) -> None:
        now = time.monotonic()
        if now >= self.next_sample:
            self.system.probe.sample()
            self.system.workers.check_alive()
            self.next_sample = now + RSS_EVERY_S

    def result(self, load: str, report: OrderReport, expected: dict[str, int], *,
               offered_rate: float = 0.0, deferred: int = 0) -> LoadResult:
        system = self.system
        seconds = max(_last_reply_ms(system) - self.start_ms, 1) / 1000.0 if report.answered \
            else 0.0
        lat = report.latencies_s
        return LoadResult(
            load=load, messages=report.answered, seconds=seconds, offered_rate=offered_rate,
            deferred=deferred, worker_cpu_s=system.probe.cpu_s() - self.cpu0,
            redis_cpu_s=process_cpu_s(system.redis_pid) - self.redis0,
            peak_rss_mb=system.probe.peak_rss_bytes / 2**20,
            p50_ms=1000 * percentile(lat, 50), p99_ms=1000 * percentile(lat, 99),
            violations=report.violations, missing=report.missing,
            duplicated=report.duplicated, overlaps=_overlaps(system, expected))


def _overlaps(system: RunningSystem, expected: dict[str, int]) -> int | None:
    """Messages whose ``started_at`` is before the ``delivered_at`` of the same user's
    previous message (by ``seq``)."""
    found, stamped = 0, False
    for user in expected:
        entries: list[tuple[str, dict[str, str]]] = system.client.xrange(  # type: ignore[assignment]
            keys.outbox(user))
        by_seq = {int(f["seq"]): f for _, f in entries if "started_at" in f}
        stamped = stamped or bool(by_seq)
        found += sum(1 for seq, f in by_seq.items() if seq - 1 in by_seq
                     and float(f["started_at"]) < float(by_seq[seq - 1]["delivered_at"]))
    return found if stamped else None


def _await_replies(system: RunningSystem, meter: _Meter, count: int) -> None:
    """Until ``count`` replies are in the feed, or none came for :data:`STALL_S`."""
    seen, last_progress = -1, time.monotonic()
    while (now_seen := int(system.client.xlen(keys.OUTBOX_FEED))) < count:
        if now_seen != seen:
            seen, last_progress = now_seen, time.monotonic()
        elif time.monotonic() - last_progress > STALL_S:
            return
        meter.tick()
        time.sleep(0.02)


def interleaved(users: int, per_user: int, *, prefix: str, seed: int) -> list[ChatMessage]:
    """``per_user`` messages of each of ``users`` users, shuffled, each user's kept in order."""
    turns = [f"{prefix}{n}" for n in range(users) for _ in range(per_user)]
    random.Random(seed).shuffle(turns)
    seqs: dict[str, int] = {}
    messages = []
    for user in turns:
        seq = seqs.get(user, 0)
        seqs[user] = seq + 1
        messages.append(ChatMessage(user, f"message {seq} from {user}",
                                    message_id=f"{user}-{seq}", extra={"seq": seq}))
    return messages


def burst(system: RunningSystem, users: int, per_user: int, *, prefix: str = "b",
          seed: int = 7) -> LoadResult:
    """``users x per_user`` messages published at once (see module doc)."""
    system.clear_replies()
    messages = interleaved(users, per_user, prefix=prefix, seed=seed)
    meter = _Meter(system)
    system.publish(stamp(messages))
    _await_replies(system, meter, len(messages))
    expected = expected_counts(messages)
    return meter.result("burst", check_order(system.client, expected), expected)


class _Population:
    """Users with no message pending; picks one at random in O(1)."""

    def __init__(self, size: int, prefix: str) -> None:
        self.idle = [f"{prefix}{n}" for n in range(size)]
        self.where = {user: n for n, user in enumerate(self.idle)}

    def take(self, rng: random.Random) -> str | None:
        if not self.idle:
            return None
        n = rng.randrange(len(self.idle))
        user, last = self.idle[n], self.idle[-1]
        self.idle[n], self.where[last] = last, n
        self.idle.pop()
        del self.where[user]
        return user

    def give_back(self, user: str) -> bool:
        """``user``'s reply arrived; False when they had nothing pending (a duplicate)."""
        if user in self.where:
            return False
        self.where[user] = len(self.idle)
        self.idle.append(user)
        return True


def live(system: RunningSystem, rate: float, duration_s: float, population: int, *,
         prefix: str = "l", seed: int = 11) -> LoadResult:
    """Poisson arrivals at ``rate``/s for ``duration_s``, one pending message per user at most
    (see module doc)."""
    system.clear_replies()
    rng = random.Random(seed)
    users = _Population(population, prefix)
    sent: dict[str, int] = {}
    pending = 0
    deferred = 0
    last_id = "0-0"
    meter = _Meter(system)
    start = time.monotonic()
    next_at = start + rng.expovariate(rate)
    held = False

    def read_replies(block_ms: int | None) -> int:
        nonlocal last_id
        found: list[tuple[str, list[tuple[str, dict[str, str]]]]] = system.client.xread(
            {keys.OUTBOX_FEED: last_id}, count=10_000, block=block_ms)  # type: ignore[assignment]
        answered = 0
        for _stream, entries in found or []:
            for entry_id, fields in entries:
                answered += users.give_back(fields["user"])
                last_id = entry_id
        return answered

    end = start + duration_s
    last_reply_at = time.monotonic()
    while (now := time.monotonic()) < end or pending:
        if now < end and now >= next_at:
            user = users.take(rng)
            if user is not None:
                seq = sent.get(user, 0)
                system.publish_one(ChatMessage(user, f"message {seq} from {user}",
                                               message_id=f"{user}-{seq}", sent_at=time.time(),
                                               extra={"seq": seq}))
                sent[user] = seq + 1
                pending += 1
                held = False
                next_at += rng.expovariate(rate)
                continue
            # Every user is waiting for a reply: this arrival waits for the next one.
            deferred += 0 if held else 1
            held = True
        wait_ms = int(1000 * (next_at - now)) if now < end and not held else 20
        got = read_replies(wait_ms if wait_ms >= 1 else None)
        if got:
            pending -= got
            last_reply_at = time.monotonic()
        elif now >= end and now - last_reply_at > STALL_S:
            break
        meter.tick()
    report = check_order(system.client, sent)
    return meter.result("live", report, sent, offered_rate=rate, deferred=deferred)
