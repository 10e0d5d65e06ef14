"""Jobs on a real workload worker: progress, checkpoints, pause/resume, cancel, kill -9,
lost messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from deploy.launcher import wait_for_workers
from jobs.control import (
    cancel_job,
    clean_finished_jobs,
    create_job,
    pause_job,
    redispatch_lost_jobs,
    resume_job,
)
from jobs.kinds import Profiling
from jobs.records import JobStatus
from jobs.store import JobStore
from routing import keys
from routing.kombu_lists import priority_lists
from routing.queues import MAINTENANCE_QUEUE, WORKLOAD_QUEUES
from tests.harness import WorkerSet, wait_until

EVERY = 10


def start_workload(workers: WorkerSet, producer: Any) -> None:
    """The workload worker and the maintenance worker (restart passes, cancel guards)."""
    workers.start_celery("workloads", "-Q", ",".join(WORKLOAD_QUEUES), "-c", "2",
                         "--prefetch-multiplier", "1")
    workers.start_maintenance()
    wait_for_workers(producer, [*WORKLOAD_QUEUES, MAINTENANCE_QUEUE])


@pytest.fixture
def jobs_env(workers: WorkerSet, producer: Any, rclient: Any) -> Iterator[JobStore]:
    workers.env.update(JOB_CHECKPOINT_EVERY=str(EVERY), JOB_CANCEL_GRACE_S="1",
                       WORK_LEASE_S="60", SHARD_COUNT="1")
    start_workload(workers, producer)
    yield JobStore(rclient, ttl_s=3600)


def reference_profile(rows: int, seed: int) -> dict[str, Any]:
    kind = Profiling()
    params = {"rows": rows, "seed": seed}
    state = kind.initial_state(params)
    for i in range(rows):
        kind.process(params, i, state, lambda o, p: "", "x")
    return kind.result(params, state)


def status_of(store: JobStore, job_id: str) -> JobStatus:
    record = store.get(job_id)
    assert record is not None
    return record.status


def test_profiling_job_reports_progress_and_exact_stats(jobs_env, producer):
    """Breaks if progress is not written to the job record, if the result differs from a
    straight computation (state lost between checkpoints), if item ids are committed twice,
    or if cleanup removes unfinished jobs or keeps expired finished ones."""
    store = jobs_env
    # 120 rows x 50 ms: the job runs ~6 s, so a poll every 50 ms sees it mid-run even when the
    # test process is starved for seconds on a loaded machine.
    job = create_job(store, producer, kind="profiling", owner="alice", priority=3,
                     params={"rows": 120, "seed": 5, "item_delay_ms": 50})
    seen: list[int] = []
    wait_until(lambda: (seen.append(store.get(job.id).current)  # type: ignore[union-attr]
                        or status_of(store, job.id) == JobStatus.COMPLETED), 60,
               what="profiling job completed")
    record = store.get(job.id)
    assert record is not None and record.result == reference_profile(120, 5)
    assert record.public()["progress"] == {"current": 120, "total": 120, "percent": 100.0,
                                           "message": "profiling: 120/120"}
    assert any(0 < c < 120 for c in seen), "progress was never seen between 0 and total"
    assert store.processed(job.id) == [f"row-{i}" for i in range(120)]
    # The unfinished job must really be unfinished when cleanup runs. A short job could be
    # taken by the idle worker and finish before the pause lands (control is seen only at
    # checkpoints), so this one is far too long to finish (~50 s), and the test waits until
    # it is PAUSED: queued when the pause came (never runs) or stopped at its first checkpoint.
    paused = create_job(store, producer, kind="profiling", owner="alice", priority=9,
                        params={"rows": 1000, "item_delay_ms": 50})
    pause_job(store, paused.id, "alice")
    wait_until(lambda: status_of(store, paused.id) == JobStatus.PAUSED, 30,
               what="second job paused")
    assert clean_finished_jobs(store, ttl_s=0) == [job.id]
    assert not store.redis.exists(keys.job(job.id), keys.job_processed(job.id))
    assert store.get(paused.id) is not None


def test_pause_then_resume_processes_every_item_exactly_once(jobs_env, producer):
    """Breaks if a pause does not stop at a checkpoint, if resume restarts from zero or skips
    past the checkpoint, or if an item id is committed twice or never."""
    store = jobs_env
    job = create_job(store, producer, kind="llm", owner="bob", priority=0,
                     params={"prompts": [f"q{i}" for i in range(80)], "item_delay_ms": 100})
    # 100 ms per item: after item 15 the job has ~6.5 s left, so the pause always lands
    # before the job ends, even on a slow machine.
    wait_until(lambda: store.get(job.id).current >= 15, 60, what="job under way")  # type: ignore[union-attr]
    pause_job(store, job.id, "bob")
    wait_until(lambda: status_of(store, job.id) == JobStatus.PAUSED, 30, what="job paused")
    saved = store.load_checkpoint(job.id)
    assert saved is not None and saved.position % EVERY == 0 and 0 < saved.position < 80
    assert len(store.processed(job.id)) == saved.position
    resume_job(store, producer, job.id, "bob")
    wait_until(lambda: status_of(store, job.id) == JobStatus.COMPLETED, 60, what="completed")
    record = store.get(job.id)
    assert record is not None
    assert store.processed(job.id) == [f"prompt-{i}" for i in range(80)]
    assert record.resumed_from == [0, saved.position]
    assert [r.split(" (")[0] for r in record.result["replies"]] == [f"re: q{i}" for i in range(80)]


def test_cancel_stops_at_checkpoint_and_clears_it(jobs_env, producer):
    """Breaks if a cancel is ignored by a running job or leaves its checkpoint behind."""
    store = jobs_env
    job = create_job(store, producer, kind="profiling", owner="alice", priority=3,
                     params={"rows": 2000, "item_delay_ms": 5})
    wait_until(lambda: store.get(job.id).current >= 25, 60, what="job under way")  # type: ignore[union-attr]
    assert store.load_checkpoint(job.id) is not None
    cancel_job(store, producer, job.id, "alice", grace_s=30)
    wait_until(lambda: status_of(store, job.id) == JobStatus.CANCELLED, 30, what="cancelled")
    assert store.load_checkpoint(job.id) is None
    assert store.get(job.id).current < 2000  # type: ignore[union-attr]


def test_cancel_revokes_a_job_that_never_reaches_a_checkpoint(jobs_env, producer, workers):
    """Breaks if the JOB_CANCEL_GRACE_S fallback (revoke terminate) is missing: the job would
    stay running for minutes; or if the worker cannot take new work afterwards."""
    store = jobs_env
    job = create_job(store, producer, kind="profiling", owner="alice", priority=3,
                     params={"rows": 5, "item_delay_ms": 10_000})
    wait_until(lambda: status_of(store, job.id) == JobStatus.RUNNING, 30, what="running")
    cancel_job(store, producer, job.id, "alice", grace_s=1)
    wait_until(lambda: status_of(store, job.id) == JobStatus.CANCELLED, 30,
               what="cancel enforced by revoke")
    assert store.load_checkpoint(job.id) is None
    after = create_job(store, producer, kind="profiling", owner="alice", priority=0,
                       params={"rows": 20})
    wait_until(lambda: status_of(store, after.id) == JobStatus.COMPLETED, 60,
               what="worker serves the next job")
    assert "Terminating" in workers.log("workloads") or "SIGKILL" in workers.log("workloads")


def test_killed_worker_resumes_from_last_checkpoint(jobs_env, producer, workers):
    """Breaks if a job restarts from zero after kill -9 (checkpoint unused), never finishes
    (lost message not recovered at worker start), or commits an item twice."""
    store = jobs_env
    job = create_job(store, producer, kind="profiling", owner="alice", priority=3,
                     params={"rows": 150, "seed": 9, "item_delay_ms": 20})
    wait_until(lambda: store.get(job.id).current >= 45, 60, what="job under way")  # type: ignore[union-attr]
    workers.kill("workloads")
    killed_at = store.get(job.id).current  # type: ignore[union-attr]
    start_workload(workers, producer)
    wait_until(lambda: status_of(store, job.id) == JobStatus.COMPLETED, 90, what="completed")
    record = store.get(job.id)
    assert record is not None and record.runs == 2
    first, resumed = record.resumed_from
    assert first == 0 and resumed % EVERY == 0 and killed_at - EVERY <= resumed <= killed_at
    assert store.processed(job.id) == [f"row-{i}" for i in range(150)]
    assert record.result == reference_profile(150, 9)


def test_higher_priority_job_runs_first(workers, producer, rclient):
    """Breaks if a job's priority is not passed to the broker or is inverted (0 must be the
    highest): with one busy slot, a priority-0 job queued after a priority-9 one runs first."""
    workers.env.update(SHARD_COUNT="1")
    workers.start_celery("workloads", "-Q", ",".join(WORKLOAD_QUEUES), "-c", "1",
                         "--prefetch-multiplier", "1")
    wait_for_workers(producer, list(WORKLOAD_QUEUES))
    store = JobStore(rclient, ttl_s=3600)
    # The blocker runs ~9 s, so it still holds the only slot when both jobs are queued below
    # (the queueing takes milliseconds; the window must survive a heavily loaded machine).
    blocker = create_job(store, producer, kind="profiling", owner="a", priority=5,
                         params={"rows": 3, "item_delay_ms": 3000})
    wait_until(lambda: status_of(store, blocker.id) == JobStatus.RUNNING, 30, what="busy")
    low = create_job(store, producer, kind="profiling", owner="a", priority=9,
                     params={"rows": 5})
    high = create_job(store, producer, kind="profiling", owner="a", priority=0,
                      params={"rows": 5})
    wait_until(lambda: status_of(store, low.id) == JobStatus.COMPLETED, 60, what="both ran")
    low_done, high_done = store.get(low.id), store.get(high.id)
    assert low_done is not None and high_done is not None
    assert high_done.status == JobStatus.COMPLETED
    assert high_done.finished_at < low_done.finished_at  # type: ignore[operator]


def queue_depth(rclient: Any, queue: str) -> int:
    return sum(rclient.llen(name) for _, name in priority_lists(queue))


def take_message(rclient: Any, queue: str, task_id: str) -> tuple[str, str]:
    """Remove task ``task_id``'s message from ``queue``: ``(sub-list, raw envelope)``."""
    for _, name in priority_lists(queue):
        for raw in rclient.lrange(name, 0, -1):
            if json.loads(raw)["headers"]["id"] == task_id:
                assert rclient.lrem(name, 1, raw) == 1
                return name, raw
    raise AssertionError(f"no message {task_id} in {queue}")


def test_queued_job_whose_message_was_lost_is_dispatched_again(workers, producer, rclient):
    """Breaks if a queued job whose message vanished (a worker killed between kombu's BRPOP and
    its unacked write; Redis losing the write) stays queued forever, if the pass misses a
    message in a priority sub-list, or if the re-sent job does not run exactly once."""
    workers.env.update(SHARD_COUNT="1", WORK_LEASE_S="60")
    store = JobStore(rclient, ttl_s=3600)
    # No workload worker yet: the job waits, then its message is lost as a killed take loses
    # it. Priority 5 puts it in kombu's sub-list profiling:3, not in the queue's own list.
    job = create_job(store, producer, kind="profiling", owner="alice", priority=5,
                     params={"rows": 30, "seed": 4})
    sub_list, _ = take_message(rclient, "profiling", job.dispatch_id)
    assert sub_list != "profiling" and queue_depth(rclient, "profiling") == 0
    assert redispatch_lost_jobs(store, producer, grace_s=0) == [job.id]
    resent = store.get(job.id)
    assert resent is not None and resent.status == JobStatus.QUEUED
    assert resent.dispatch_id not in ("", job.dispatch_id)
    assert queue_depth(rclient, "profiling") == 1
    # A worker starting now runs its own maintenance pass (WORK_LEASE_S=60: nothing is due).
    start_workload(workers, producer)
    wait_until(lambda: status_of(store, job.id) == JobStatus.COMPLETED, 60, what="completed")
    record = store.get(job.id)
    assert record is not None and record.runs == 1
    assert record.result == reference_profile(30, 4)
    assert store.processed(job.id) == [f"row-{i}" for i in range(30)]


def test_only_a_lost_queued_job_is_dispatched_again(producer, rclient):
    """Breaks if the pass re-sends a job whose message still waits in its queue or is reserved
    by a worker (kombu's unacked record), a paused or cancelled one, or one whose message was
    sent less than the grace period ago."""
    store = JobStore(rclient, ttl_s=3600)

    def create(kind: str, priority: int) -> Any:
        params = {"rows": 10} if kind == "profiling" else {"prompts": ["q"]}
        return create_job(store, producer, kind=kind, owner="alice", priority=priority,
                          params=params)

    waiting = create("profiling", 0)
    reserved = create("llm", 9)
    _, raw = take_message(rclient, "llm", reserved.dispatch_id)
    # What kombu writes when a worker takes a message: tag -> [envelope, exchange, routing key].
    rclient.hset(keys.KOMBU_UNACKED, "tag-1", json.dumps([json.loads(raw), "", "llm"]))
    paused = create("profiling", 3)
    pause_job(store, paused.id, "alice")
    cancelled = create("llm", 0)
    cancel_job(store, producer, cancelled.id, "alice", grace_s=30)
    lost = create("profiling", 6)
    for job in (paused, cancelled, lost):
        take_message(rclient, "profiling" if job.kind == "profiling" else "llm", job.dispatch_id)
    depths = {q: queue_depth(rclient, q) for q in ("profiling", "llm")}
    assert depths == {"profiling": 1, "llm": 0}

    assert redispatch_lost_jobs(store, producer, grace_s=3600) == []
    assert redispatch_lost_jobs(store, producer, grace_s=0) == [lost.id]
    assert {q: queue_depth(rclient, q) for q in depths} == {"profiling": 2, "llm": 0}
    for job in (waiting, reserved, paused, cancelled):
        after = store.get(job.id)
        assert after is not None and after.dispatch_id == job.dispatch_id, job.id
    assert status_of(store, paused.id) == JobStatus.PAUSED
    assert status_of(store, cancelled.id) == JobStatus.CANCELLED
