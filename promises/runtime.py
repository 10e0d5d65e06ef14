"""Running one promise in a worker: claim the dispatch, do the work, record it once.

The result write is fenced (``status='running' AND attempt=N``): a run whose dispatch was
superseded (its worker presumed dead and the promise re-dispatched as N+1) does its work in
vain and records nothing. Every run is written to the ``PROMISE_RUNS`` stream.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import redis
from celery import Celery

from promises.db import engine_for
from promises.kinds import WORK, AskAI
from promises.models import PromiseStatus
from promises.service import PromiseService
from promises.store import PromiseStore
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


def run_promise(service: PromiseService, promise_id: str, attempt: int, *, holder: str,
                ask: AskAI, runlog: redis.Redis, retry_base_s: float = 0.2) -> str:
    store = service.store
    if not store.claim(promise_id, attempt, holder):
        log.info("promise %s attempt %d superseded or finished, not running it", promise_id,
                 attempt)
        return "stale"
    promise = service.owned(promise_id, None)
    _log_run(runlog, promise_id, attempt, "started", holder)
    parents = {p: store.get(p).result for p in promise.parents}  # type: ignore[union-attr]
    tries = 0
    while True:
        try:
            result = WORK[promise.type](promise.params, parents, ask, promise.owner)
            break
        except Exception as exc:
            tries += 1
            if not store.count_retry(promise_id, attempt):
                return "stale"
            if tries < service.max_attempts:
                log.warning("promise %s try %d failed (%s), retrying", promise_id, tries, exc)
                time.sleep(min(retry_base_s * 2 ** (tries - 1), 5.0))
                continue
            error = f"{type(exc).__name__}: {exc} (after {tries} tries)"
            if store.record(promise_id, attempt, PromiseStatus.FAILED, error=error):
                _log_run(runlog, promise_id, attempt, "recorded", holder)
                service.finished(service.owned(promise_id, None))
                return PromiseStatus.FAILED.value
            return "stale"
    _log_run(runlog, promise_id, attempt, "worked", holder)
    if store.record(promise_id, attempt, PromiseStatus.COMPLETED, result=result):
        _log_run(runlog, promise_id, attempt, "recorded", holder)
        service.finished(service.owned(promise_id, None))
        return PromiseStatus.COMPLETED.value
    _log_run(runlog, promise_id, attempt, "fenced-off", holder)
    return "stale"
