"""The consumer bootstep that makes a shard worker the only consumer of its shard.

Before the consumer's event loop starts (the first BRPOP happens there), :class:`ShardLeaseStep`
blocks until it holds the shard lease: a second worker for the same shard waits here as a hot
standby. Once it holds the lease it restores the shard's stranded messages to the head of the
queue, then a heartbeat thread renews the lease every third of its TTL.

A worker that cannot renew must never keep consuming: the heartbeat ends the process
(``os._exit``) before the lease could expire and let another worker in. With the solo pool the
running task holds the main thread, so nothing short of ending the process stops it in time; its
message stays unacked and the next owner restores it (its done-marker stops a second reply).
The step applies only to a worker consuming exactly one shard queue.

The heartbeat alone cannot stop a worker that was paused (SIGSTOP, a VM freeze) past its
lease: on resume it could take one more message or write one more reply before its heartbeat
thread notices. So the take checks :func:`ensure_lease_fresh` first (no renewal within
``0.6 x TTL``: exit), and the reply commit is fenced in Redis (:func:`commit_fence`). A take
blocks for at most kombu's ``brpop_timeout`` (1 s) and a lease outlives its last renewal by
the TTL, which is why ``SHARD_LEASE_TTL_S`` is at least 3 s: a take sent while the lease was
fresh ends before anyone else can hold the lease.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import redis
from celery import bootsteps
from celery.worker import state as worker_state

import celeryconfig
from routing.queues import shard_of_queue
from routing.shardmap import ShardMap, claim_shard_map
from services.conversation import Fence
from shardhost.lease import ShardLease
from shardhost.stranded import LeaseNotHeld, restore_stranded

log = logging.getLogger(__name__)

#: Exit status of a worker that lost its lease (a supervisor restarts it as a standby).
EXIT_LEASE_LOST = 75


def lease_client(url: str, ttl_s: float) -> redis.Redis:
    """A client whose every call fails fast, so a stalled Redis cannot hold the heartbeat."""
    timeout = max(min(ttl_s / 10, 2.0), 0.2)
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                decode_responses=True)


class LeaseKeeper(threading.Thread):
    """Renews the lease every ``ttl/3``; ends the process when it cannot keep it."""

    def __init__(self, lease: ShardLease, queue: str) -> None:
        super().__init__(name=f"lease-{queue}", daemon=True)
        self.lease = lease
        self.queue = queue
        self.interval_s = lease.ttl_s / 3
        #: Give up this long after the last renewal that was sent, well before the TTL.
        self.give_up_s = lease.ttl_s * 0.6
        self.last_sent_ok = time.monotonic()
        self.stopped = threading.Event()

    def run(self) -> None:
        wait = self.interval_s
        while not self.stopped.wait(wait):
            sent = time.monotonic()
            try:
                if not self.lease.renew():
                    self.lose("its lease is held by another owner")
                    return
                self.last_sent_ok, wait = sent, self.interval_s
            except redis.RedisError as exc:
                overdue = time.monotonic() - self.last_sent_ok
                if overdue >= self.give_up_s:
                    self.lose(f"no renewal for {overdue:.1f}s ({exc})")
                    return
                log.warning("renewing the lease of %s failed (%s); retrying", self.queue, exc)
                wait = min(self.interval_s, 0.5)

    def fresh(self) -> bool:
        """Whether the last renewal is recent enough that nobody else can hold the lease."""
        return time.monotonic() - self.last_sent_ok < self.give_up_s

    def lose(self, why: str) -> None:
        if self.stopped.is_set():
            return
        log.critical("LEASE LOST: shard worker of %s stops consuming and exits now: %s; "
                     "a supervisor restarts it as a standby", self.queue, why)
        for handler in logging.getLogger().handlers + log.handlers:
            handler.flush()
        os._exit(EXIT_LEASE_LOST)

    def stop(self) -> None:
        self.stopped.set()


class ShardLeaseStep(bootsteps.StartStopStep):
    """Hold the shard lease before consuming; restore stranded messages; keep it renewed."""

    label = "shard lease"
    requires = ("celery.worker.consumer.connection:Connection",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.lease: ShardLease | None = None
        self.keeper: LeaseKeeper | None = None
        self.queue: str | None = None

    def start(self, parent: Any) -> None:
        queue, shard = consumed_shard(parent)
        if shard is None:
            return
        settings = celeryconfig.settings
        if self.lease is None:
            url = parent.app.conf.broker_url
            self.lease = ShardLease(lease_client(url, settings.shard_lease_ttl_s), shard,
                                    ttl_s=settings.shard_lease_ttl_s)
            self.queue = queue
            adopt_shard_map(self.lease.redis, settings.shard_count, f"worker of {queue}")
        self._wait_for_lease(queue)
        started = time.monotonic()
        try:
            restored = restore_stranded(self.lease.redis, queue, lease_key=self.lease.key,
                                        lease_token=self.lease.token)
        except LeaseNotHeld as exc:
            LeaseKeeper(self.lease, queue).lose(str(exc))
            return
        log.info("shard lease for %s held (fence %s); restored %d stranded message(s) in "
                 "%.3fs; consuming", queue, self.lease.fence, len(restored),
                 time.monotonic() - started)
        if self.keeper is None or not self.keeper.is_alive():
            self.keeper = LeaseKeeper(self.lease, queue)
            self.keeper.start()
        global _keeper
        _keeper = self.keeper

    def _wait_for_lease(self, queue: str) -> None:
        assert self.lease is not None
        poll_s = min(self.lease.ttl_s / 20, 0.25)
        announced = False
        while True:
            worker_state.maybe_shutdown()  # SIGTERM while a standby: leave, holding nothing
            try:
                if self.lease.acquire() is not None:
                    return
            except redis.RedisError as exc:
                log.warning("cannot reach Redis for the lease of %s: %s", queue, exc)
            if not announced:
                current = self.lease.current() if _reachable(self.lease) else None
                log.info("standby for %s: lease held by %s; waiting for it", queue,
                         current.holder if current else "another worker")
                announced = True
            time.sleep(poll_s)

    def stop(self, parent: Any) -> None:
        # A consumer restart (lost broker connection) keeps the lease: nothing runs meanwhile,
        # and giving it up would let a standby in for no reason.
        pass

    def shutdown(self, parent: Any) -> None:
        if self.keeper is not None:
            self.keeper.stop()
        if self.lease is not None and self.lease.fence is not None:
            try:
                self.lease.release()
                log.info("released the shard lease of %s", self.queue)
            except redis.RedisError as exc:  # it expires by itself
                log.warning("could not release the lease of %s: %s", self.queue, exc)


def adopt_shard_map(client: redis.Redis, shard_count: int, who: str) -> ShardMap:
    """The deployment's shard map (written with ``shard_count`` if this is its first
    consumer); a differing SHARD_COUNT is reported and the map followed."""
    current = claim_shard_map(client, shard_count)
    if current.count != shard_count:
        log.warning("%s: the deployment's shard map has %d shards (epoch %d); SHARD_COUNT=%d "
                    "of this process is not used", who, current.count, current.epoch,
                    shard_count)
    return current


def consumed_shard(parent: Any) -> tuple[str, int | None]:
    """``(queue, shard)`` of a worker consuming exactly one shard queue, else ``("", None)``."""
    names = list(parent.app.amqp.queues.consume_from or {})
    if len(names) != 1:
        return "", None
    return names[0], shard_of_queue(names[0])


#: The lease keeper of this process, once it holds a shard lease (shard workers only).
_keeper: LeaseKeeper | None = None


def commit_fence() -> Fence | None:
    """The lease this shard worker's reply commits must still hold (``None``: not a shard)."""
    keeper = _keeper
    return Fence(keeper.lease.key, keeper.lease.token) if keeper is not None else None


def held_lease() -> ShardLease | None:
    """The lease this shard worker holds (``None`` before it holds one)."""
    keeper = _keeper
    return keeper.lease if keeper is not None else None


def ensure_lease_fresh() -> None:
    """Called before each take: a worker resumed after a long pause exits instead of taking."""
    keeper = _keeper
    if keeper is not None and not keeper.fresh():
        keeper.lose(f"no lease renewal for {time.monotonic() - keeper.last_sent_ok:.1f}s "
                    "before taking a message (was the process paused?)")


def lease_lost(why: str) -> None:
    """End this shard worker now (the message stays in flight for the next owner)."""
    if _keeper is not None:
        _keeper.lose(why)
    os._exit(EXIT_LEASE_LOST)


def _reachable(lease: ShardLease) -> bool:
    try:
        return bool(lease.redis.ping())
    except redis.RedisError:
        return False
