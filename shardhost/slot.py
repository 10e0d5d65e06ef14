"""One shard as a host holds it: its lease, and which of its users have a message running.

This is the per-shard rule of a shard host, kept in memory by the one host that owns the
shard: at most ``concurrency`` messages of the shard run at once, never two of one user, and
a message whose user is unknown runs alone. Everything taken is also in the shard's
in-flight list in Redis, so a crash loses nothing this object knew.

Each acquisition of the lease is a *generation*. When the lease is lost, the runs still going
belong to a generation that no longer exists: they may finish, but they neither ack nor count
against the room, and the shard is not taken again by this host until they have all ended
(so a restored message never runs twice at once in one host).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from routing.queues import shard_queue
from shardhost.lease import ShardLease


@dataclass(frozen=True)
class Run:
    """One message of this shard being run: its raw bytes and its user (None: unknown)."""

    raw: bytes
    user: str | None
    generation: int


class HostedShard:
    def __init__(self, shard: int, concurrency: int) -> None:
        self.shard = shard
        self.queue = shard_queue(shard)
        self.concurrency = concurrency
        self.cond = threading.Condition()
        #: The lease of the current generation; None while this host does not own the shard.
        self.lease: ShardLease | None = None
        self.generation = 0
        self.running: dict[bytes, Run] = {}
        #: Runs of earlier generations that have not ended yet.
        self.abandoned = 0
        #: Set when the shard leaves this host (retired by a rescale, or the host stops).
        self.closed = False
        #: Monotonic time since which the shard map no longer gives this shard to this host.
        self.unwanted_since: float | None = None
        #: Counts every change a waiting consumer must see (a run ended, the lease came or
        #: went, the shard closed): see :meth:`wait_for_change`.
        self.changes = 0

    # ---- read under ``cond`` ----
    def room(self) -> int:
        """How many more messages may start now (0 while an unknown user's message runs)."""
        if self.lease is None or any(run.user is None for run in self.running.values()):
            return 0
        return self.concurrency - len(self.running)

    def busy_users(self) -> list[str]:
        return [run.user for run in self.running.values() if run.user is not None]

    # ---- transitions ----
    def acquired(self, lease: ShardLease) -> None:
        with self.cond:
            self.lease = lease
            self.generation += 1
            self._changed()

    def lost(self, generation: int) -> bool:
        """Give up generation ``generation`` (no-op if already given up); True if it was."""
        with self.cond:
            if self.lease is None or generation != self.generation:
                return False
            self.lease = None
            self.abandoned += len(self.running)
            self.running.clear()
            self._changed()
            return True

    def start(self, raw: bytes, user: str | None, generation: int) -> Run:
        """Record a run of ``raw``, taken under ``generation``. Taken under a generation that
        has ended since (the lease was lost in between): it runs abandoned from the start."""
        with self.cond:
            run = Run(raw, user, generation)
            if generation == self.generation and self.lease is not None:
                self.running[raw] = run
            else:
                self.abandoned += 1
            return run

    def current(self, run: Run) -> bool:
        """Whether ``run`` belongs to the generation that holds the lease now."""
        with self.cond:
            return run.generation == self.generation and self.lease is not None

    def finished(self, run: Run) -> None:
        with self.cond:
            if self.running.get(run.raw) is run:
                del self.running[run.raw]
            else:
                self.abandoned -= 1
            self._changed()

    def may_acquire(self) -> bool:
        with self.cond:
            return self.lease is None and self.abandoned == 0 and not self.closed

    def idle(self) -> bool:
        with self.cond:
            return not self.running and self.abandoned == 0

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self._changed()

    def wait_for_change(self, seen: int, timeout_s: float) -> None:
        """Wait until something changed since :attr:`changes` was ``seen`` (at most
        ``timeout_s``). A run that ended between the reading and this call does not wait:
        the consumer read ``seen`` before its take, and that run's user may be takeable now."""
        with self.cond:
            if self.changes == seen:
                self.cond.wait(timeout_s)

    def _changed(self) -> None:  # under ``cond``
        self.changes += 1
        self.cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while self.running or self.abandoned:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True
