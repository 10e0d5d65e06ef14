"""What the API process holds: one producer app, one Redis client, the job and promise stores.

Built at start-up (``api.app`` lifespan), reached by handlers through ``request.app.state``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Annotated, Any

import redis
from celery import Celery
from fastapi import Depends, Request

from ingest.catchup import catch_up
from ingest.log import IngestLog
from jobs.store import JobStore
from promises.recovery import recover_promises
from promises.runtime import promise_service
from promises.service import PromiseService
from routing import keys, producer_app
from routing.dispatch import max_payload_bytes
from services.redis_client import connect

log = logging.getLogger("shardline.api")


@dataclass
class ApiState:
    settings: Any
    producer: Celery
    redis: redis.Redis
    jobs: JobStore
    promises: PromiseService
    ingest: IngestLog

    @classmethod
    def build(cls, settings: Any) -> ApiState:
        if not settings.redis_url:
            raise RuntimeError("no Redis: set REDIS_URL or start the service with shardline run")
        app = producer_app("shardline-api", settings.redis_url)
        client = connect(settings.redis_url)
        return cls(settings=settings, producer=app, redis=client,
                   jobs=JobStore(client, ttl_s=settings.job_ttl_s),
                   promises=promise_service(app, settings), ingest=IngestLog(client))

    def start_up(self) -> None:
        """The start-up passes: lost promises re-dispatched, missed messages queued."""
        s = self.settings
        acted = recover_promises(self.promises, lease_s=s.work_lease_s)
        missed = catch_up(self.ingest, self.producer, start=time.time(),
                          window_s=s.catchup_window_s, max_payload_bytes=max_payload_bytes(),
                          processed=lambda m: bool(m.task_id)
                          and bool(self.redis.exists(keys.done(m.task_id))))
        log.info("start-up: %d promise(s) moved on, %d missed message(s) queued",
                 len(acted), len(missed))

    def close(self) -> None:
        self.redis.close()
        self.producer.close()


def state(request: Request) -> ApiState:
    return request.app.state.shardline  # type: ignore[no-any-return]


#: Handler parameter type: the process's :class:`ApiState`.
State = Annotated[ApiState, Depends(state)]
