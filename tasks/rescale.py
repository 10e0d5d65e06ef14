"""The rescale's marker task: an old shard reaching its drain barrier (``services.barrier``).

``shardline rescale`` LPUSHes ``epoch_barrier(epoch, shard)`` onto every old shard queue in
the same Lua call that switches the shard map, so when a shard's worker runs it, everything
routed to that shard under older epochs has run. The task marks the shard passed, sends each
user who waited for it ``release_held`` (routed to the user's current shard, where their held
messages run before anything newer), then marks the shard released. Running it twice (a
redelivery after a crash) is harmless: the second run finds nobody waiting.
"""

from __future__ import annotations

import logging
from typing import Any

from routing.dispatch import publish_task
from routing.queues import EPOCH_BARRIER, RELEASE_HELD
from services.registry import services
from tasks.app import app
from tasks.ordered import shard_of_request

log = logging.getLogger(__name__)


@app.task(name=EPOCH_BARRIER, bind=True, acks_late=True, ignore_result=True)
def epoch_barrier(self: Any, epoch: int, shard: int) -> int:
    """Shard ``shard`` has run everything routed to it before epoch ``epoch``: release the
    moved users waiting for it; the number released."""
    here = shard_of_request(self.request)
    if here is not None and here != shard:
        log.error("barrier marker of shard %s (epoch %s) arrived on shard %s; ignored",
                  shard, epoch, here)
        return 0
    barriers = services().get("barriers")
    users = barriers.pass_marker(epoch, shard)
    for user in users:  # fenced: routed by the new map even if this process's copy is old
        publish_task(self.app, RELEASE_HELD, [user], {})
    barriers.released(epoch, shard)
    log.info("shard %s passed the drain barrier of epoch %s; released %d waiting user(s)",
             shard, epoch, len(users))
    return len(users)
