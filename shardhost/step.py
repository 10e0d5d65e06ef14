"""The worker bootstep that turns a Celery worker into a shard host (``shardhost.host``).

Active only in a worker that consumes exactly ``SHARD_HOST_QUEUE`` (``-Q shard-hosts``, as
``shardhost.launcher`` starts it); any other worker is untouched. It starts after the pool, so
the service registry is built (``worker_process_init``) before a message runs, and stops
before it: on a warm shutdown the host stops taking, lets its running messages finish, and
gives its leases up.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import bootsteps

import celeryconfig
from routing.queues import SHARD_HOST_QUEUE
from shardhost.follower import ShardMapFollower
from shardhost.host import WAIT_S, ShardHost
from shardhost.solo_lease import adopt_shard_map

#: Connections of the takes' client: one per hosted shard (its consumer thread) and more.
QUEUE_CONNECTIONS = 2**16

log = logging.getLogger(__name__)


class ShardHostStep(bootsteps.StartStopStep):
    label = "shard host"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.host: ShardHost | None = None

    def include_if(self, parent: Any) -> bool:
        return list(parent.app.amqp.queues.consume_from or {}) == [SHARD_HOST_QUEUE]

    def create(self, parent: Any) -> Any:
        settings = celeryconfig.settings
        url = str(parent.app.conf.broker_url)
        ttl = settings.shard_lease_ttl_s
        # Leases fail fast (a stalled Redis must not hold the renewals past the TTL); takes,
        # waits and acks block for up to WAIT_S. Both keep raw bytes: an item need not be UTF-8.
        timeout = max(min(ttl / 10, 2.0), 0.2)
        leases = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        # Each hosted shard's consumer thread holds a connection in its blocking peek: redis-py
        # 8's default pool (100 connections) refuses the 101st shard's take.
        queues = redis.Redis.from_url(url, socket_timeout=WAIT_S + 5, socket_connect_timeout=5,
                                      max_connections=QUEUE_CONNECTIONS)
        adopt_shard_map(leases, settings.shard_count, f"shard host {parent.hostname}")
        whole = settings.shard_range == tuple(range(settings.shard_count))
        follower = ShardMapFollower(
            leases, settings.shard_count, None if whole else frozenset(settings.shard_range),
            slot=settings.shard_host_slot, hosts=settings.shard_processes)
        self.host = ShardHost(parent.app, queues, leases, hostname=parent.hostname,
                              follower=follower, concurrency=settings.shard_concurrency,
                              threads=settings.shard_host_threads,
                              lease_ttl_s=settings.shard_lease_ttl_s,
                              map_refresh_s=settings.shard_map_refresh_s)
        return self.host

    def start(self, parent: Any) -> None:
        assert self.host is not None
        self.host.start()

    def stop(self, parent: Any) -> None:
        if self.host is not None and not self.host.stopping.is_set():
            self.host.stop()

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)
