"""The workload worker's limits: a job past its soft time limit stops paused at its checkpoint
and resumes from it; the per-child limits reach workload workers only."""

from __future__ import annotations

from typing import Any

import psutil

from deploy.launcher import wait_for_workers
from jobs.control import create_job, resume_job
from jobs.records import JobRecord, JobStatus
from jobs.store import JobStore
from routing.queues import ORDERED_TASKS, WORKLOAD_QUEUES
from tests.harness import WorkerSet, alive, wait_until

EVERY = 5


def _settled(store: JobStore, job_id: str, runs: int) -> JobRecord | None:
    """The job once its ``runs``-th run has stopped (paused or finished), else None."""
    record = store.get(job_id)
    if record is None or record.runs < runs or record.status in (JobStatus.QUEUED,
                                                                  JobStatus.RUNNING):
        return None
    return record


def test_a_job_past_its_soft_time_limit_pauses_at_its_checkpoint_and_resumes(
        workers: WorkerSet, producer: Any, rclient: Any) -> None:
    """A real workload worker with JOB_SOFT_TIME_LIMIT_S=2 and a job of about 40 s. Breaks if
    the soft limit is not set on job tasks (the job completes), or if the runner treats
    SoftTimeLimitExceeded as a failure (the job fails) instead of pausing at its checkpoint,
    or if the second run does not continue from that checkpoint (items committed twice or
    skipped)."""
    workers.env.update(SHARD_COUNT="1", JOB_SOFT_TIME_LIMIT_S="2", TASK_TIME_LIMIT_S="120",
                       JOB_CHECKPOINT_EVERY=str(EVERY))
    workers.start_celery("workloads", "-Q", ",".join(WORKLOAD_QUEUES), "-c", "1",
                         "--prefetch-multiplier", "1")
    wait_for_workers(producer, list(WORKLOAD_QUEUES))
    store = JobStore(rclient, ttl_s=3600)
    job = create_job(store, producer, kind="profiling", owner="a", priority=5,
                     params={"rows": 800, "item_delay_ms": 50})

    first: JobRecord | None = None

    def first_run_stopped() -> bool:
        nonlocal first
        first = _settled(store, job.id, 1)
        return first is not None

    wait_until(first_run_stopped, 90, what="the first run to stop")
    assert first is not None and first.status == JobStatus.PAUSED, (first.status, first.error)
    assert "soft time limit" in first.message and first.error is None
    checkpoint = store.load_checkpoint(job.id)
    assert checkpoint is not None and checkpoint.position > 0
    assert checkpoint.position % EVERY == 0 and checkpoint.position < first.total
    assert f"checkpoint at item {checkpoint.position}" in first.message
    assert store.processed(job.id) == [f"row-{i}" for i in range(checkpoint.position)]

    resume_job(store, producer, job.id, None)
    second: JobRecord | None = None

    def second_run_stopped() -> bool:
        nonlocal second
        second = _settled(store, job.id, 2)
        return second is not None

    wait_until(second_run_stopped, 90, what="the resumed run to stop")
    assert second is not None and second.status == JobStatus.PAUSED
    assert second.resumed_from == [0, checkpoint.position]
    again = store.load_checkpoint(job.id)
    assert again is not None and again.position > checkpoint.position
    assert store.processed(job.id) == [f"row-{i}" for i in range(again.position)]


def _conf_of(producer: Any, node: str) -> dict[str, Any]:
    replies = producer.control.inspect(destination=[node], timeout=5).conf() or {}
    return dict(replies.get(node) or {})


def test_per_child_limits_reach_the_workload_worker_only(workers: WorkerSet, producer: Any,
                                                         rclient: Any) -> None:
    """Breaks if WORKLOAD_MAX_TASKS_PER_CHILD / WORKLOAD_MAX_MEMORY_PER_CHILD_KB are not given
    to the workload worker (its pool process is not replaced after its one task), or if they
    (or a soft time limit) reach a shard worker, whose ordered tasks must never be cut
    short."""
    workers.env.update(SHARD_COUNT="1", WORKLOAD_MAX_TASKS_PER_CHILD="1",
                       WORKLOAD_MAX_MEMORY_PER_CHILD_KB="400000")
    workers.start_shard(0)
    workers.start_celery("workloads", "-Q", ",".join(WORKLOAD_QUEUES), "-c", "1",
                         "--prefetch-multiplier", "1")
    wait_for_workers(producer, ["shard.0", *WORKLOAD_QUEUES])
    host = producer.control.inspect(timeout=5).ping() or {}
    workload = next(n for n in host if n.startswith("workloads@"))
    shard = next(n for n in host if n.startswith("shard-0@"))

    conf = _conf_of(producer, workload)
    assert conf.get("worker_max_tasks_per_child") == 1
    assert conf.get("worker_max_memory_per_child") == 400000
    shard_conf = _conf_of(producer, shard)
    assert shard_conf and shard_conf.get("worker_max_tasks_per_child") is None
    assert shard_conf.get("worker_max_memory_per_child") is None
    registered = producer.control.inspect(destination=[shard], timeout=5).registered(
        "soft_time_limit") or {}
    # A task is listed with "[soft_time_limit=...]" only when it has one.
    assert set(ORDERED_TASKS) <= set(registered[shard]), registered[shard]

    main = psutil.Process(workers.procs["workloads"].pid)

    def pool_pids() -> set[int]:
        """The worker's pool processes: the children of its main process."""
        return {child.pid for child in main.children() if alive(child)}

    wait_until(lambda: bool(pool_pids()), 60, what="the workload pool")
    before = pool_pids()
    store = JobStore(rclient, ttl_s=3600)
    job = create_job(store, producer, kind="profiling", owner="a", priority=5,
                     params={"rows": 3})
    wait_until(lambda: store.get(job.id).status == JobStatus.COMPLETED,  # type: ignore[union-attr]
               60, what="the job")
    wait_until(lambda: bool(pool_pids()) and not pool_pids() & before, 60,
               what="the pool process to be replaced after its one task")
