"""The maintenance pass has a consumer of its own: it runs while a long job holds every slot of
the workload worker."""

from __future__ import annotations

import uuid
from typing import Any

from deploy.launcher import wait_for_workers
from jobs.control import cancel_job, create_job
from jobs.records import JobRecord, JobStatus
from jobs.store import JobStore
from routing import keys
from routing.queues import MAINTENANCE, MAINTENANCE_QUEUE, WORKLOAD_QUEUES
from tests.harness import WorkerSet, wait_until


def _lost_run(store: JobStore, rclient: Any) -> str:
    """A job held by a run whose worker died long ago: only a maintenance pass re-queues it."""
    record = JobRecord(id=uuid.uuid4().hex, kind="profiling", owner="a", priority=5,
                       status=JobStatus.QUEUED, params={"rows": 3, "seed": 1,
                                                        "item_delay_ms": 0}, total=3)
    store.create(record)
    rclient.hset(keys.job(record.id), mapping={"status": "running", "beat_at": 1,
                                               "holder": "gone@nowhere|dead-boot|t-1"})
    return record.id


def test_a_pass_runs_while_a_long_job_holds_the_workload_worker(workers: WorkerSet,
                                                                 producer: Any,
                                                                 rclient: Any) -> None:
    """Breaks if ``shardline.maintenance`` is routed to a workload queue again (it used to go
    to ``default``): the only workload slot is busy with a job far longer than the test, so
    the pass would wait behind it and the lost run would stay "running" until the hang
    guard fires. The pass is sent by name, as beat sends it."""
    workers.env.update(SHARD_COUNT="1", WORK_LEASE_S="60", JOB_CHECKPOINT_EVERY="5")
    workers.start_celery("workloads", "-Q", ",".join(WORKLOAD_QUEUES), "-c", "1",
                         "--prefetch-multiplier", "1")
    workers.start_maintenance()
    wait_for_workers(producer, [*WORKLOAD_QUEUES, MAINTENANCE_QUEUE])
    store = JobStore(rclient, ttl_s=3600)
    # 10,000 rows x 100 ms: about 17 minutes, far longer than the test.
    long_job = create_job(store, producer, kind="profiling", owner="a", priority=5,
                          params={"rows": 10_000, "item_delay_ms": 100})

    def long_job_running() -> bool:
        record = store.get(long_job.id)
        return record is not None and record.status == JobStatus.RUNNING

    wait_until(long_job_running, 60, what="the long job to hold the workload worker")
    lost = _lost_run(store, rclient)

    producer.send_task(MAINTENANCE)

    def requeued() -> bool:
        record = store.get(lost)
        return record is not None and record.status != JobStatus.RUNNING

    try:
        wait_until(requeued, 60, what="the maintenance pass to re-queue the lost run")
        record = store.get(long_job.id)
        assert record is not None and record.status == JobStatus.RUNNING
        assert record.current < record.total  # the pass ran while the long job was running
        assert store.get(lost).dispatch_id  # type: ignore[union-attr]
    finally:
        cancel_job(store, producer, long_job.id, None, grace_s=1.0)
