"""Running one promise in a worker: claim the dispatch, do the work, record it once.

The result write is fenced (``status='running' AND attempt=N``): a run whose dispatch was
superseded (its worker presumed dead and the promise re-dispatched as N+1) does its work in
vain and records nothing. Every run is written to the ``PROMISE_RUNS`` stream.

While the work runs (it may take minutes: LLM calls), a heartbeat thread refreshes the promise's
``updated_at`` every third of ``WORK_LEASE_S``, fenced on the same attempt, so the recovery pass
(which re-dispatches a running promise silent for the lease) leaves a healthy long run alone
instead of running its work twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from celery import Celery

from promises.db import engine_for
from promises.kinds import AskAI, promise_kinds
from promises.models import PromiseStatus
from promises.service import PromiseService
from promises.store import Promise, PromiseStore
from routing import keys

log = logging.getLogger(__name__)

_services: dict[tuple[int, str], PromiseService] = {}


def promise_service(app: Celery, settings: Any = None) -> PromiseService:
    """This process's service on ``DATABASE_URL`` (one engine per process)."""
    if settings is None:
        import celeryconfig

        settings = celeryconfig.settings
    key = (os.getpid(), settings.database_url)
    if key not in _services:
        _services[key] = PromiseService(PromiseStore(engine_for(settings.database_url)), app,
                                        on_parent_failure=settings.promise_on_parent_failure,
                                        max_attempts=settings.promise_max_attempts)
    return _services[key]


def _log_run(runlog: redis.Redis, promise_id: str, attempt: int, event: str, holder: str) -> None:
    runlog.xadd(keys.PROMISE_RUNS, {"promise": promise_id, "attempt": attempt, "event": event,
                                    "holder": holder, "at": time.time()},
                maxlen=100_000, approximate=True)


class Heartbeat(threading.Thread):
    """Touches one run's promise every ``interval_s`` until stopped or no longer its run.

    A touch that fails (the database briefly unreachable) is only logged: the next beat tries
    again, and the run itself goes on; only a lease that really lapses lets recovery take over.
    """

    def __init__(self, store: PromiseStore, promise_id: str, attempt: int,
                 interval_s: float) -> None:
        super().__init__(name=f"heartbeat-{promise_id}-{attempt}", daemon=True)
        self.store = store
        self.promise_id = promise_id
        self.attempt = attempt
        self.interval_s = interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            if not self.beat():
                return

    def beat(self) -> bool:
        """One touch; False once the attempt is superseded or the promise final or cancelled."""
        try:
            if self.store.touch(self.promise_id, self.attempt):
                return True
        except Exception as exc:  # any database error: the next beat tries again
            log.warning("heartbeat of promise %s attempt %d failed (%s); retrying",
                        self.promise_id, self.attempt, exc)
            return True
        log.info("promise %s attempt %d is no longer running; its heartbeat stops",
                 self.promise_id, self.attempt)
        return False


@contextmanager
def heartbeat(store: PromiseStore, promise_id: str, attempt: int,
              interval_s: float | None) -> Iterator[None]:
    """A :class:`Heartbeat` for the body of the ``with``; stopped and joined however it ends.

    ``interval_s`` None (or not positive): no heartbeat.
    """
    if interval_s is None or interval_s <= 0:
        yield
        return
    beat = Heartbeat(store, promise_id, attempt, interval_s)
    beat.start()
    try:
        yield
    finally:
        beat.stopped.set()
        beat.join()


def _work(service: PromiseService, promise: Promise, attempt: int, ask: AskAI,
          retry_base_s: float) -> tuple[str, Any]:
    """The promise's work with its retries: ("worked", result), ("failed", error) or
    ("stale", None) when a retry finds the attempt superseded."""
    store = service.store
    parents = {p: store.get(p).result for p in promise.parents}  # type: ignore[union-attr]
    tries = 0
    while True:
        try:
            work = promise_kinds()[promise.type].work  # a kind no longer configured fails
            return "worked", work(promise.params, parents, ask, promise.owner)
        except Exception as exc:
            tries += 1
            if not store.count_retry(promise.id, attempt):
                return "stale", None
            if tries >= service.max_attempts:
                return "failed", f"{type(exc).__name__}: {exc} (after {tries} tries)"
            log.warning("promise %s try %d failed (%s), retrying", promise.id, tries, exc)
            time.sleep(min(retry_base_s * 2 ** (tries - 1), 5.0))


def run_promise(service: PromiseService, promise_id: str, attempt: int, *, holder: str,
                ask: AskAI, runlog: redis.Redis, retry_base_s: float = 0.2,
                heartbeat_s: float | None = None) -> str:
    """Run ``attempt`` of the promise if it is still the current dispatch; record it once.

    ``heartbeat_s``: how often the run touches its promise while the work runs; the worker
    passes a third of ``WORK_LEASE_S``. None (the default) sends no heartbeat, which suits
    only callers whose work surely ends well within the lease: a longer run would be
    re-dispatched by the recovery pass while still running.
    """
    store = service.store
    if not store.claim(promise_id, attempt, holder):
        log.info("promise %s attempt %d superseded or finished, not running it", promise_id,
                 attempt)
        return "stale"
    promise = service.owned(promise_id, None)
    _log_run(runlog, promise_id, attempt, "started", holder)
    with heartbeat(store, promise_id, attempt, heartbeat_s):
        outcome, value = _work(service, promise, attempt, ask, retry_base_s)
    if outcome == "stale":
        return "stale"
    if outcome == "failed":
        if store.record(promise_id, attempt, PromiseStatus.FAILED, error=value):
            _log_run(runlog, promise_id, attempt, "recorded", holder)
            service.finished(service.owned(promise_id, None))
            return PromiseStatus.FAILED.value
        return "stale"
    _log_run(runlog, promise_id, attempt, "worked", holder)
    if store.record(promise_id, attempt, PromiseStatus.COMPLETED, result=value):
        _log_run(runlog, promise_id, attempt, "recorded", holder)
        service.finished(service.owned(promise_id, None))
        return PromiseStatus.COMPLETED.value
    _log_run(runlog, promise_id, attempt, "fenced-off", holder)
    return "stale"
