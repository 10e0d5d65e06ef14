"""The one Celery app, configured only from ``celeryconfig``, and its process lifecycle hooks."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown, worker_shutdown

import celeryconfig
import tasks.instrumentation  # noqa: F401  (connects the task metrics signals)
from services.registry import start_services, stop_services
from shardhost.solo_lease import ShardLeaseStep
from shardhost.solo_retire import RetireStep
from shardhost.step import ShardHostStep

app = Celery("shardline")
app.config_from_object("celeryconfig")
# A shard worker consumes nothing until it holds its shard's lease (tasks/shard_lease.py).
app.steps["consumer"].add(ShardLeaseStep)
# A shard removed by a rescale: its worker exits (status 0) once the shard has drained.
app.steps["consumer"].add(RetireStep)
# A worker listening on SHARD_HOST_QUEUE hosts many shards on its threads (shardhost/host.py).
app.steps["worker"].add(ShardHostStep)


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
