"""The one Celery app, configured only from ``celeryconfig``, and its process lifecycle hooks."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

from celery import Celery
from celery.exceptions import SecurityWarning
from celery.signals import (
    beat_init,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

import celeryconfig
import tasks.instrumentation  # noqa: F401  (connects the task metrics signals)
import tasks.workload  # noqa: F401  (connects the workload worker's limits)
from routing.errors import EXIT_AUTH_FAILED, RedisAuthFailed
from services.redis_client import check_credentials
from services.registry import start_services, stop_services
from shardhost.solo_lease import ShardLeaseStep
from shardhost.solo_retire import RetireStep
from shardhost.step import ShardHostStep

if celeryconfig.settings.root_warning == "once":
    # Started by the launcher, which said it once for all its workers (docs/running.md, "Running as
    # root"); otherwise each worker repeats the same 7 lines.
    warnings.filterwarnings("ignore", message=r"\s*You're running the worker with superuser",
                            category=SecurityWarning)

app = Celery("shardline")
app.config_from_object("celeryconfig")
# A shard worker consumes nothing until it holds its shard's lease (shardhost/solo_lease.py).
app.steps["consumer"].add(ShardLeaseStep)
# A shard removed by a rescale: its worker exits (status 0) once the shard has drained.
app.steps["consumer"].add(RetireStep)
# A worker listening on SHARD_HOST_QUEUE hosts many shards on its threads (shardhost/host.py).
app.steps["worker"].add(ShardHostStep)




@beat_init.connect
@worker_init.connect
def _refuse_bad_credentials(**_: Any) -> None:
    # Celery would retry a refused password forever, logging "Cannot connect"; it never heals,
    # so the worker (or beat) stops before it starts and says why.
    try:
        check_credentials(str(app.conf.broker_url))
    except RedisAuthFailed as exc:
        print(f"shardline: {exc}; exiting", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_AUTH_FAILED) from exc


@worker_process_init.connect
def _build_services(**_: Any) -> None:
    # Solo pool: fires once in the main process. Prefork: once in each child, after fork,
    # so no child reuses a client its parent built.
    logging.getLogger("shardline").setLevel(celeryconfig.settings.log_level)
    start_services(celeryconfig.settings)


@worker_process_shutdown.connect
def _close_child_services(**_: Any) -> None:
    stop_services()


@worker_shutdown.connect
def _close_services(**_: Any) -> None:
    # worker_process_shutdown does not fire for the solo pool; this covers it.
    stop_services()
