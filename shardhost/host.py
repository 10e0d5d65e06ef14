"""A shard host: one process consumes many shards, running their messages on a pool of threads.

The shape is dramatiq's worker: a consumer thread per shard feeds one pool of worker threads.
A reply is an LLM call, seconds of waiting with the GIL released, so one process can keep
hundreds of them in flight where a solo worker keeps one. What makes it a *shard* host is the
rule each consumer keeps (``shardhost.slot``): a shard is the unit of ownership (one lease, one
owner at a time), a user is the unit of order (never two messages of one user at once, and a
user's messages start in queue order).

Every take is conditional on the shard's lease in Redis (``shardhost.protocol``); a lost lease
costs this host that one shard, not the process: its runs finish unacked (their commits are
fenced), and the host stands by for the shard again once they have ended. One keeper thread
renews every lease the host holds in one round trip, takes the shards it should own as their
leases come free (restoring their stranded messages to the head first), and follows the shard
map: new shards are taken, shards a rescale removed are given up once drained.
"""

from __future__ import annotations

import functools
import logging
import queue as queue_module
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery

from routing import keys
from services.conversation import Fence
from shardhost.execute import parse, run_message, user_of
from shardhost.fence import LeaseLost
from shardhost.follower import ShardMapFollower
from shardhost.lease import ShardLease
from shardhost.protocol import LeaseNotOwned, ShardQueue, renew_many
from shardhost.slot import HostedShard, Run
from shardhost.stranded import LeaseNotHeld, restore_stranded
from shardhost.transport import dead_letter_raw

log = logging.getLogger(__name__)

#: Seconds a consumer blocks in Redis waiting for its queue (a wake-up to re-check its state).
WAIT_S = 1.0
#: How far past the head a consumer looks, per message it may run (window = K x this).
WINDOW_PER_SLOT = 8
#: Seconds a stopping host waits for its running messages before leaving them in flight.
STOP_GRACE_S = 30.0


class WorkerThreads:
    """A fixed pool of daemon threads and the permits that bound what the host takes.

    A consumer takes only as many messages as it holds permits, so nothing taken waits in
    memory for a thread (the in-flight list never holds more than the threads can run).
    Daemon threads: a run stuck past the stop grace must not keep the process alive; its
    message stays in flight for the next owner.
    """

    def __init__(self, count: int) -> None:
        self.permits = threading.Semaphore(count)
        self.jobs: queue_module.SimpleQueue[Callable[[], None] | None] = queue_module.SimpleQueue()
        self.threads = [threading.Thread(target=self._work, name=f"shard-run-{i}", daemon=True)
                        for i in range(count)]
        for thread in self.threads:
            thread.start()

    def acquire(self, most: int, stopping: threading.Event) -> int:
        """Block for one permit, then take up to ``most`` without waiting; 0 if stopping."""
        while not self.permits.acquire(timeout=WAIT_S):
            if stopping.is_set():
                return 0
        got = 1
        while got < most and self.permits.acquire(blocking=False):
            got += 1
        return got

    def release(self, count: int = 1) -> None:
        for _ in range(count):
            self.permits.release()

    def submit(self, job: Callable[[], None]) -> None:
        self.jobs.put(job)

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                job()
            except BaseException:  # a thread must outlive any one message
                log.exception("a shard run failed outside the task")

    def stop(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)


class ShardHost:
    def __init__(self, app: Celery, client: redis.Redis, leases: redis.Redis, *, hostname: str,
                 follower: ShardMapFollower, concurrency: int, threads: int,
                 lease_ttl_s: float, map_refresh_s: float) -> None:
        self.app = app
        self.redis = client
        #: Lease calls fail fast: renewals must not wait behind a stalled connection.
        self.leases = leases
        self.hostname = hostname
        self.follower = follower
        self.concurrency = concurrency
        self.window = concurrency * WINDOW_PER_SLOT
        self.lease_ttl_s = lease_ttl_s
        self.map_refresh_s = map_refresh_s
        self.workers = WorkerThreads(threads)
        self.shards: dict[int, HostedShard] = {}
        self.queues: dict[int, ShardQueue] = {}
        self.stopping = threading.Event()
        #: Set once a stopping host's runs have ended: the keeper renews the leases until then.
        self._leases_given_up = threading.Event()
        self._consumers: dict[int, threading.Thread] = {}
        self._keeper = threading.Thread(target=self._keep, name="shard-keeper", daemon=True)

    # ---- lifecycle ----
    def start(self) -> None:
        self._follow_map(time.monotonic())
        self._keeper.start()
        log.info("shard host %s: hosting shards %s, %d message(s) per shard at once, "
                 "%d worker threads", self.hostname, sorted(self.shards), self.concurrency,
                 len(self.workers.threads))

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop taking; let running messages finish (up to ``grace_s``); give the leases up."""
        self.stopping.set()
        for slot in self.shards.values():
            slot.close()
        for thread in list(self._consumers.values()):
            thread.join(WAIT_S * 3)
        deadline = time.monotonic() + grace_s
        for slot in list(self.shards.values()):
            if slot.wait_idle(max(deadline - time.monotonic(), 0.0)):
                self._release(slot)
            else:
                log.warning("shard %s: messages still running at stop stay in flight for the "
                            "next owner", slot.shard)
        self._leases_given_up.set()
        self._keeper.join(WAIT_S * 3)
        self.workers.stop()

    # ---- one consumer thread per shard ----
    def _add(self, shard: int) -> None:
        slot = HostedShard(shard, self.concurrency)
        self.shards[shard] = slot
        self.queues[shard] = ShardQueue(self.redis, shard, slot.queue)
        thread = threading.Thread(target=self._consume, args=(slot,), daemon=True,
                                  name=f"shard-{shard}-consumer")
        self._consumers[shard] = thread
        thread.start()

    def _consume(self, slot: HostedShard) -> None:
        ops = self.queues[slot.shard]
        #: A take failed without its reply: Redis may have run it (see _put_back_untracked).
        take_unsure = False
        while not self.stopping.is_set() and not slot.closed:
            with slot.cond:
                if slot.room() <= 0:
                    slot.cond.wait(WAIT_S)
                    continue
                room, busy, generation = slot.room(), slot.busy_users(), slot.generation
                seen = slot.changes
                assert slot.lease is not None
                token = slot.lease.token
            if take_unsure:
                take_unsure = not self._put_back_untracked(slot, ops, token, generation)
                continue
            permits = self.workers.acquire(room, self.stopping)
            if not permits:
                continue
            try:
                taken = ops.take(token, permits, self.window, busy)
            except LeaseNotOwned:
                self.workers.release(permits)
                self._lost(slot, generation, "a take found its lease held by another owner")
                continue
            except redis.RedisError as exc:
                self.workers.release(permits)
                log.warning("shard %s: take failed (%s); retrying", slot.shard, exc)
                take_unsure = True
                self.stopping.wait(0.5)
                continue
            self.workers.release(permits - len(taken.items))
            for raw in taken.items:
                payload = parse(raw)
                run = slot.start(raw, user_of(payload), generation)
                self.workers.submit(functools.partial(self._run, slot, ops, run, payload, token))
            if taken.items:
                continue
            if taken.queue_length == 0:
                try:
                    ops.wait(WAIT_S)
                except redis.RedisError as exc:
                    log.warning("shard %s: waiting for messages failed (%s)", slot.shard, exc)
                    self.stopping.wait(0.5)
            else:  # every message in the window waits behind a running one of its user
                slot.wait_for_change(seen, WAIT_S)

    def _put_back_untracked(self, slot: HostedShard, ops: ShardQueue, token: str,
                            generation: int) -> bool:
        """After a take whose reply was lost (the connection broke; Redis may have run it and
        moved messages nobody here runs), put back at the head every in-flight message of the
        shard that no run of this host holds. Without it they would wait in flight for the
        next takeover, and the users' later messages would run first. True when done."""
        with slot.cond:
            tracked = set(slot.running)
        try:
            moved = ops.put_back_untracked(token, tracked)
        except LeaseNotOwned:
            self._lost(slot, generation, "putting back a lost take found its lease held by "
                                         "another owner")
            return True  # the next owner restores the in-flight list
        except redis.RedisError as exc:
            log.warning("shard %s: cannot check the in-flight list yet (%s)", slot.shard, exc)
            self.stopping.wait(0.5)
            return False
        if moved:
            log.warning("shard %s: put %d message(s) of a take whose reply was lost back at "
                        "the head", slot.shard, moved)
        return True

    def _run(self, slot: HostedShard, ops: ShardQueue, run: Run, payload: dict[str, Any] | None,
             token: str) -> None:
        acked = False
        try:
            run_message(self.app, slot.queue, run.raw, payload, hostname=self.hostname,
                        fence=Fence(keys.shard_lease(slot.shard), token))
            acked = slot.current(run) and ops.ack(token, run.raw)
            if not acked and slot.current(run):
                self._lost(slot, run.generation, "an ack found its lease held by another owner")
        except LeaseLost as exc:
            self._lost(slot, run.generation, str(exc))
        except redis.RedisError as exc:
            # The run ended but its ack did not reach Redis: the message stays in flight; a
            # restore finds its done-marker and does not deliver it again.
            log.warning("shard %s: could not ack a message (%s)", slot.shard, exc)
        except Exception as exc:
            # Not the task failing (the tracer handles that): running it at all failed. Left
            # in flight, it would come back at the head on the next takeover, after the
            # user's later messages; it is parked with its reason instead.
            log.exception("shard %s: a message could not be run", slot.shard)
            dead_letter_raw(slot.queue, run.raw, f"the shard host could not run it: {exc!r}")
            if slot.current(run):
                ops.ack(token, run.raw)
        finally:
            self.workers.release()
            slot.finished(run)

    # ---- leases and the shard map ----
    def _keep(self) -> None:
        renew_every = self.lease_ttl_s / 3
        next_renew = next_map = time.monotonic()
        # A stopping host keeps renewing until its runs have ended (``stop``): a lease that ran
        # out under a run would let a standby run the message again, and fence this reply.
        while not self._leases_given_up.wait(min(0.25, renew_every)):
            now = time.monotonic()
            try:
                if now >= next_renew:
                    self._renew()
                    next_renew = now + renew_every
                if self.stopping.is_set():
                    continue
                if now >= next_map:
                    self._follow_map(now)
                    next_map = now + self.map_refresh_s
                self._acquire_free()
            except redis.RedisError as exc:
                log.warning("shard host %s: cannot reach Redis (%s); the leases run out unless "
                            "it comes back in time", self.hostname, exc)

    def _renew(self) -> None:
        held = [(slot, slot.lease, slot.generation) for slot in list(self.shards.values())
                if slot.lease is not None]
        results = renew_many(self.leases, [(lease.key, lease.token) for _, lease, _ in held if
                                          lease is not None],
                             max(int(self.lease_ttl_s * 1000), 1))
        for (slot, _, generation), renewed in zip(held, results, strict=True):
            if not renewed:
                self._lost(slot, generation, "its lease was not renewed: held by another owner")

    def _acquire_free(self) -> None:
        for slot in list(self.shards.values()):
            if self.stopping.is_set() or not slot.may_acquire():
                continue
            lease = ShardLease(self.leases, slot.shard, ttl_s=self.lease_ttl_s)
            if lease.acquire() is None:
                continue
            try:
                restored = restore_stranded(self.leases, slot.queue, lease_key=lease.key,
                                            lease_token=lease.token)
            except LeaseNotHeld:
                continue
            slot.acquired(lease)
            log.info("shard %s: lease held (fence %s); restored %d stranded message(s); "
                     "consuming", slot.shard, lease.fence, len(restored))

    def _lost(self, slot: HostedShard, generation: int, why: str) -> None:
        if slot.lost(generation):
            log.critical("LEASE LOST: shard %s leaves host %s: %s; its running messages finish "
                         "unacked, and the host stands by for it", slot.shard, self.hostname,
                         why)

    def _release(self, slot: HostedShard) -> None:
        lease = slot.lease
        if lease is None:
            return
        # Given up here first, so a renewal racing the release reads as no loss of ours.
        slot.lost(slot.generation)
        try:
            lease.release()
            log.info("released the shard lease of shard %s", slot.shard)
        except redis.RedisError as exc:  # it expires by itself
            log.warning("could not release the lease of shard %s: %s", slot.shard, exc)

    def _follow_map(self, now: float) -> None:
        wanted = self.follower.wanted()
        for shard in sorted(wanted - self.shards.keys()):
            self._add(shard)
        for shard, slot in list(self.shards.items()):
            if shard in wanted:
                slot.unwanted_since = None
                continue
            slot.unwanted_since = slot.unwanted_since or now
            # Gone from the map for two refreshes: by then no process routes to it any more.
            if now - slot.unwanted_since >= 2 * self.map_refresh_s and slot.idle():
                log.warning("shard %s was removed by a rescale and has drained: host %s gives "
                            "it up", shard, self.hostname)
                slot.close()
                self._release(slot)
                del self.shards[shard]
                self._consumers.pop(shard, None)

