"""Nothing stays pending forever: the pass that re-dispatches promises whose tasks were lost.

Run at start (API start-up; a workload worker's start, naming itself) and by beat every
``MAINTENANCE_INTERVAL_S``. Each step is one of the service's fenced transitions, so two
passes racing each other, or a pass racing a live worker, dispatch a promise once.
"""

from __future__ import annotations

import time

from promises.models import PromiseStatus
from promises.service import PromiseService


def _node_and_boot(holder: str) -> tuple[str, str]:
    node, _, rest = holder.partition("|")
    return node, rest.partition("|")[0]


def recover_promises(service: PromiseService, *, lease_s: float, node: str | None = None,
                     boot: str | None = None) -> list[str]:
    """Re-dispatch lost promises; returns the ids acted on.

    - pending with every parent completed (the dispatcher died after the parent's commit),
      or with a broken parent (the cascade was interrupted): advanced now;
    - running, held by ``node`` under another boot id (that worker restarted) or silent for
      ``lease_s`` (dispatched into a lost task, or its worker died; a live run heartbeats
      every third of the lease, however long its work): re-dispatched as attempt N+1,
      which fences the old attempt off;
    - final but never notified: notified (a fixed task id makes a repeat harmless).
    """
    now = time.time()
    acted: list[str] = []
    for promise in service.store.find(statuses=["pending", "running"], limit=100_000):
        if promise.status == PromiseStatus.PENDING:
            service.advance(promise.id)
            after = service.store.get(promise.id)
            if after is not None and after.status != PromiseStatus.PENDING:
                acted.append(promise.id)
            continue
        restarted = False
        if promise.holder and node is not None:
            held_node, held_boot = _node_and_boot(promise.holder)
            restarted = held_node == node and held_boot != boot
        if ((restarted or now - promise.updated_at > lease_s)
                and service.redispatch(promise, from_status="running")):
            acted.append(promise.id)
    for promise in service.store.unnotified(finished_before=now - 1.0):
        service.finished(promise)
        acted.append(promise.id)
    return acted
