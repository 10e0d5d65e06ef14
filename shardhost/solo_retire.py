"""A removed shard's worker retires by itself once a shrinking rescale has drained its shard.

After ``shardline rescale M`` with ``M`` below the old count, shards ``M..N-1`` get no new
messages (publishes are fenced on the epoch), but their queues still hold what was routed to
them before the switch, up to the rescale's barrier marker. :class:`RetireStep` watches, every
``SHARD_MAP_REFRESH_S``, whether its shard is drained away (``services.barrier``: beyond the
map's count, marker passed and waiting users released, queue and in-flight list empty). Once
that has held for two refresh intervals (by then no process routes a ``send_task`` of an
ordered task by name by an older copy of the map), the worker stops consuming and exits with
status 0, as a warm shutdown: its lease is released and nothing is in flight. The shard runner
(``deploy/shards.py``) does not restart a removed shard whose worker exited 0.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from celery import bootsteps
from celery.platforms import EX_OK
from celery.worker import state as worker_state

import celeryconfig
from services.barrier import shard_drained_away
from shardhost.solo_lease import ShardLeaseStep, consumed_shard, lease_client

log = logging.getLogger(__name__)


class Retirement(threading.Thread):
    """Polls whether ``shard`` is drained away; then asks the worker to stop (status 0)."""

    def __init__(self, client: redis.Redis, shard: int, default_count: int,
                 interval_s: float) -> None:
        super().__init__(name=f"retire-shard-{shard}", daemon=True)
        self.redis = client
        self.shard = shard
        self.default_count = default_count
        self.interval_s = interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        quiet_since: float | None = None
        while not self.stopped.wait(self.interval_s):
            try:
                drained = shard_drained_away(self.redis, self.shard, self.default_count)
            except redis.RedisError as exc:
                log.warning("retirement check of shard %s failed: %s", self.shard, exc)
                continue
            now = time.monotonic()
            if not drained:
                quiet_since = None
                continue
            quiet_since = now if quiet_since is None else quiet_since
            if now - quiet_since >= 2 * self.interval_s:
                log.warning("shard %s was removed by a rescale and has drained: its worker "
                            "stops consuming and exits (status 0)", self.shard)
                worker_state.should_stop = EX_OK
                return


class RetireStep(bootsteps.StartStopStep):
    """Start a :class:`Retirement` watch once this shard worker holds its lease."""

    label = "shard retirement"
    requires = (ShardLeaseStep,)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.watch: Retirement | None = None

    def start(self, parent: Any) -> None:
        _, shard = consumed_shard(parent)
        if shard is None or (self.watch is not None and self.watch.is_alive()):
            return
        settings = celeryconfig.settings
        client = lease_client(str(parent.app.conf.broker_url), settings.shard_lease_ttl_s)
        self.watch = Retirement(client, shard, settings.shard_count,
                                settings.shard_map_refresh_s)
        self.watch.start()

    def shutdown(self, parent: Any) -> None:
        if self.watch is not None:
            self.watch.stopped.set()
