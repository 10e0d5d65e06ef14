"""Celery remote control (``celery inspect ...``) answers from every worker and stalls none."""

from __future__ import annotations

import subprocess
import sys

from celery import Celery

from deploy.launcher import PROJECT_DIR, wait_for_workers
from jobs.control import create_job
from jobs.records import JobStatus
from jobs.store import JobStore
from routing import ChatMessage, keys, send, shard_for
from routing.queues import WORKLOAD_QUEUES, shard_queue
from tests.harness import WorkerSet, wait_until

USER = 5
COMMANDS = ("ping", "stats", "conf", "active", "active_queues", "registered", "reserved",
            "scheduled", "revoked")


def _answered_by_all(app: Celery, command: str, names: set[str]) -> bool:
    replies = getattr(app.control.inspect(timeout=2.0), command)() or {}
    return names <= set(replies)


def test_inspect_answers_from_every_worker_and_both_still_take_work(workers: WorkerSet,
                                                                     producer, rclient):
    """Fails if a worker cannot encode a remote-control reply (the consumer's connection
    named its transport by class: ``inspect stats`` got "No nodes replied" and every worker
    logged ``EncodeError: Object of type type is not JSON serializable``), or if a shard or
    workload worker takes no more work after answering."""
    shard = shard_for(USER, 4)
    workers.start_shard(shard)
    workers.start_celery("workloads", "-Q", ",".join(WORKLOAD_QUEUES), "-c", "2",
                         "--prefetch-multiplier", "1")
    wait_for_workers(producer, [shard_queue(shard), *WORKLOAD_QUEUES])
    names = {n for n in (producer.control.inspect(timeout=2.0).ping() or {})}
    assert len(names) == 2, names

    store = JobStore(rclient, ttl_s=3600)
    # The workload worker is busy with a job while it answers (its reply comes from the
    # main process, the job runs in a pool child).
    busy = create_job(store, producer, kind="profiling", owner="ops", priority=3,
                      params={"rows": 40, "seed": 1, "item_delay_ms": 50})
    for command in COMMANDS:
        wait_until(lambda command=command: _answered_by_all(producer, command, names), 60,
                   interval_s=0.2, what=f"every worker to answer inspect {command}")
    cli = subprocess.run([sys.executable, "-m", "celery", "-A", "tasks", "inspect", "stats",
                          "--timeout", "10"], env=workers.env, cwd=PROJECT_DIR,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert all(name in cli.stdout for name in names), cli.stdout

    wait_until(lambda: store.get(busy.id).status == JobStatus.COMPLETED,  # type: ignore[union-attr]
               120, what="the running job to complete")
    after = create_job(store, producer, kind="profiling", owner="ops", priority=3,
                       params={"rows": 3, "seed": 2})
    send(producer, ChatMessage(USER, "still there?"))
    wait_until(lambda: store.get(after.id).status == JobStatus.COMPLETED,  # type: ignore[union-attr]
               120, what="the workload worker to take a job after the inspections")
    wait_until(lambda: rclient.xlen(keys.OUTBOX_FEED) >= 1, 120,
               what="the shard worker to answer a message after the inspections")
    for name in ("workloads", f"shard-{shard}"):
        log = workers.log(name)
        assert "EncodeError" not in log and "Control command error" not in log, log[-3000:]
