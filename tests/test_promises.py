"""Promises against SQLite and the real PostgreSQL: DAG order, failure policies, refusals,
notifications through the user's shard, and recovery after every worker is killed mid-DAG."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from deploy.launcher import wait_for_workers
from jobs.errors import InvalidWork
from promises.db import engine_for
from promises.models import PromiseEdge, PromiseRow, PromiseStatus
from promises.service import PromiseService, PromiseSpec
from promises.store import PromiseStore
from routing import ShardRouter, keys
from routing.queues import MAINTENANCE_QUEUE, WORKLOAD_QUEUES
from services.conversation import ConversationStore
from tests.harness import WorkerSet, wait_until
from tests.promise_fixtures import database_url  # noqa: F401  (fixture)

USER = "carol"


@pytest.fixture
def service(database_url: str, producer: Any) -> Iterator[PromiseService]:  # noqa: F811
    engine = engine_for(database_url)
    with Session(engine) as session, session.begin():
        session.execute(delete(PromiseEdge))
        session.execute(delete(PromiseRow))
    producer.conf.task_routes = (ShardRouter(1),)
    yield PromiseService(PromiseStore(engine), producer, max_attempts=2)


def start_all(workers: WorkerSet, producer: Any, database_url: str,  # noqa: F811
              lease_s: float = 15) -> None:
    # A maintenance pass re-dispatches (and fences off) a running promise silent for
    # WORK_LEASE_S; a live run heartbeats every third of it, however long its work.
    workers.env.update(DATABASE_URL=database_url, SHARD_COUNT="1", PROMISE_MAX_ATTEMPTS="2",
                       WORK_LEASE_S=str(lease_s), MAINTENANCE_INTERVAL_S="1")
    workers.start_shard(0)
    workers.start_celery("workloads", "-Q", ",".join(WORKLOAD_QUEUES), "-c", "2",
                         "--prefetch-multiplier", "1")
    workers.start_maintenance()
    wait_for_workers(producer, ["shard.0", *WORKLOAD_QUEUES, MAINTENANCE_QUEUE])


def _started(rclient: Any) -> list[str]:
    """Promise ids in the run log's "started" events, oldest first."""
    return [f["promise"] for _, f in rclient.xrange(keys.PROMISE_RUNS) if f["event"] == "started"]


def all_final(service: PromiseService, ids: list[str]) -> bool:
    return all(service.store.get(i).status.final for i in ids)  # type: ignore[union-attr]


def notifications(rclient: Any) -> list[dict[str, str]]:
    store = ConversationStore(rclient, history_limit=50, done_ttl_s=3600)
    return [e for e in store.outbox(USER) if e.get("kind") == "promise"]


def test_dag_runs_children_after_parents_in_parallel_and_notifies(service, workers,
                                                                  producer, rclient,
                                                                  database_url):  # noqa: F811
    """Breaks if a child starts before a parent finished, if independent promises are run
    one after another, if parent results do not reach the child, or if the user is not told
    once per promise through their shard."""
    start_all(workers, producer, database_url)
    # a and b each run 3 s: both are taken by the two pool slots well within that, so their
    # runs overlap even on a loaded machine.
    created = service.create([
        PromiseSpec(USER, "sum", "a", {"value": 1, "delay_ms": 3000}, id="a"),
        PromiseSpec(USER, "sum", "b", {"value": 2, "delay_ms": 3000}, id="b"),
        PromiseSpec(USER, "sum", "c", {"value": 10}, parents=["a", "b"], id="c"),
        PromiseSpec(USER, "echo", "d", {"text": "done"}, parents=["c"], id="d"),
    ], owner="alice")
    assert [p.status for p in created][2:] == [PromiseStatus.PENDING] * 2
    wait_until(lambda: all_final(service, ["a", "b", "c", "d"]), 60, what="DAG finished")
    a, b, c, d = (service.store.get(i) for i in "abcd")
    assert all(p is not None and p.status == PromiseStatus.COMPLETED for p in (a, b, c, d))
    assert c.result == 13 and d.result == "done" and c.parents == ["a", "b"]  # type: ignore[union-attr]
    assert a.started_at < b.finished_at and b.started_at < a.finished_at  # type: ignore[union-attr,operator]
    assert c.started_at >= max(a.finished_at, b.finished_at)  # type: ignore[union-attr,operator,type-var]
    wait_until(lambda: len(notifications(rclient)) >= 4, 30, what="4 notifications")
    told = [n["promise_id"] for n in notifications(rclient)]
    assert sorted(told) == ["a", "b", "c", "d"] and told.index("c") < told.index("d")


def test_failed_parent_fails_its_descendants_after_retries(service, workers, producer,
                                                           database_url):  # noqa: F811
    """Breaks if a failing promise is not retried PROMISE_MAX_ATTEMPTS times, or if its
    children and grandchildren stay pending instead of failing with the parent named."""
    start_all(workers, producer, database_url)
    service.create([PromiseSpec(USER, "fail", "p", id="p"),
                    PromiseSpec(USER, "echo", "c", parents=["p"], id="c"),
                    PromiseSpec(USER, "echo", "g", parents=["c"], id="g")], owner="alice")
    wait_until(lambda: all_final(service, ["p", "c", "g"]), 60, what="cascade")
    p, c, g = (service.store.get(i) for i in "pcg")
    assert p.status == PromiseStatus.FAILED and p.retries == 2  # type: ignore[union-attr]
    assert (c.status, c.error) == (PromiseStatus.FAILED, "parent p failed")  # type: ignore[union-attr]
    assert (g.status, g.error) == (PromiseStatus.FAILED, "parent c failed")  # type: ignore[union-attr]


def test_skip_policy_skips_children_of_a_cancelled_parent(service):
    """Breaks if PROMISE_ON_PARENT_FAILURE=skip is ignored or a cancel does not cascade."""
    service.on_parent_failure = "skip"
    service.create([PromiseSpec(USER, "echo", "x", id="x"),
                    PromiseSpec(USER, "echo", "y", parents=["x"], id="y"),
                    PromiseSpec(USER, "echo", "z", parents=["y"], id="z")], owner="alice")
    # No worker runs in this test: x stays dispatched (running) until cancelled.
    service.cancel("x", "alice")
    assert [service.store.get(i).status for i in "xyz"] == [  # type: ignore[union-attr]
        PromiseStatus.CANCELLED, PromiseStatus.SKIPPED, PromiseStatus.SKIPPED]


@pytest.mark.parametrize("specs, field, words", [
    ([PromiseSpec(USER, "echo", id="m", parents=["n"]),
      PromiseSpec(USER, "echo", id="n", parents=["m"])], "parents", "cycle"),
    ([PromiseSpec(USER, "echo", id="s", parents=["s"])], "parents", "cycle"),
    ([PromiseSpec(USER, "echo", id="k"),
      PromiseSpec(USER, "echo", id="u", parents=["nope"])], "parents", "unknown"),
    ([PromiseSpec(USER, "teleport", id="t")], "type", "one of"),
    ([PromiseSpec(-1, "echo", id="v")], "promises[0].user_id", "int"),
])
def test_bad_dag_is_refused_whole(service, specs, field, words):
    """Breaks if a cycle, self-parent, unknown parent or bad field is accepted, or if the
    valid promises of a refused request are created anyway (half a DAG)."""
    with pytest.raises(InvalidWork) as refused:
        service.create(specs, owner="alice")
    assert refused.value.field == field and words in refused.value.message
    with Session(service.store.engine) as session:
        assert session.scalar(select(func.count()).select_from(PromiseRow)) == 0


def test_every_promise_finishes_once_after_all_workers_are_killed(service, workers,
                                                                 producer, rclient,
                                                                 database_url):  # noqa: F811
    """Breaks if a promise killed mid-run stays running/pending forever (no restart or beat
    pass), if its result is recorded twice (no attempt fence), or if a notification is lost
    or delivered twice."""
    start_all(workers, producer, database_url)
    ids = [f"w{i}" for i in range(6)]
    # w0 runs 6 s, so the kill below always lands while it is still running (the others
    # keep 1.5 s: only w0's interruption is checked). WORK_LEASE_S (start_all) outlives it.
    service.create([PromiseSpec(USER, "sum", i,
                                {"value": 1, "delay_ms": 6000 if i == "w0" else 1500}, id=i,
                                parents=[ids[n - 2]] if n >= 2 else [])
                    for n, i in enumerate(ids)], owner="alice")
    # Wait for the run log's "started", not the store's started_at: the claim sets started_at
    # before the run is logged, and a kill between the two left only the re-run logged.
    wait_until(lambda: "w0" in _started(rclient), 30, what="w0 started")
    workers.kill("workloads")
    workers.kill("shard-0")
    workers.start("beat", [*_celery(), "beat", "-s", str(workers.log_dir / "beat-schedule")])
    start_all(workers, producer, database_url)
    wait_until(lambda: all_final(service, ids), 120, what="every promise final")
    assert [service.store.get(i).status for i in ids] == [PromiseStatus.COMPLETED] * 6  # type: ignore[union-attr]
    assert [service.store.get(i).result for i in ids] == [1, 1, 2, 2, 3, 3]  # type: ignore[union-attr]
    runs = [f for _, f in rclient.xrange(keys.PROMISE_RUNS)]
    recorded = sorted(f["promise"] for f in runs if f["event"] == "recorded")
    assert recorded == ids
    started = _started(rclient)
    assert started.count("w0") >= 2, "the kill did not interrupt a running promise"
    wait_until(lambda: len(notifications(rclient)) >= 6, 60, what="6 notifications")
    assert sorted(n["promise_id"] for n in notifications(rclient)) == ids


def _celery() -> list[str]:
    import sys

    return [sys.executable, "-m", "celery", "-A", "tasks"]


def _stale_running(service: PromiseService, promise_id: str) -> None:
    """A running promise whose run went silent long ago: the next recovery pass re-runs it."""
    long_ago = time.time() - 3600
    service.store.insert(
        [PromiseRow(id=promise_id, owner="alice", user_id=USER, description=promise_id,
                    type="echo", params='{"text": "canary"}', status="running", attempt=1,
                    retries=0, created_at=long_ago, updated_at=long_ago)], [])


def test_a_run_longer_than_the_lease_heartbeats_and_runs_once(service, workers, producer,
                                                              rclient, database_url):  # noqa: F811
    """Breaks if a healthy run whose work outlasts WORK_LEASE_S is re-dispatched by beat's
    recovery pass (no heartbeat while the work runs): its work would run twice, and the first
    attempt's result be thrown away."""
    lease_s = 3.0
    start_all(workers, producer, database_url, lease_s=lease_s)
    workers.start("beat", [*_celery(), "beat", "-s", str(workers.log_dir / "beat-schedule")])
    service.create([PromiseSpec(USER, "sum", "long", {"value": 7, "delay_ms": 8000},
                                id="long")], owner="alice")
    wait_until(lambda: "long" in _started(rclient), 30, what="long started")
    started_at = service.store.get("long").started_at or 0.0  # type: ignore[union-attr]
    # Once "long" has run past its lease, a stale canary shows that beat's pass still runs:
    # the pass that re-runs the canary would have re-dispatched a silent "long" too.
    wait_until(lambda: time.time() - started_at > 1.5 * lease_s, 30,
               what="long's run to outlast its lease")
    _stale_running(service, "canary")
    # A second start of "long" ends the wait too: without a heartbeat every attempt outlasts
    # the lease and is superseded in turn, so "long" would never finish.
    wait_until(lambda: (all_final(service, ["long", "canary"])
                        or _started(rclient).count("long") > 1), 90,
               what="long and canary final, or long started again")
    long, canary = service.store.get("long"), service.store.get("canary")
    assert long is not None and canary is not None
    runs = [(f["event"], f["attempt"]) for _, f in rclient.xrange(keys.PROMISE_RUNS)
            if f["promise"] == "long"]
    assert runs == [("started", "1"), ("worked", "1"), ("recorded", "1")]
    assert (long.status, long.result, long.attempt) == (PromiseStatus.COMPLETED, 7, 1)
    assert (canary.status, canary.attempt) == (PromiseStatus.COMPLETED, 2)
    assert (canary.finished_at or 0) < (long.finished_at or 0), "no pass ran while long ran"


def test_promises_committed_by_a_dead_api_are_dispatched_at_worker_start(service, workers,
                                                                        producer,
                                                                        database_url):  # noqa: F811
    """Breaks if the start-up pass does not pick up promises whose creator (the API) died
    after committing them but before dispatching any: they would stay pending forever."""
    now = time.time()
    service.store.insert(
        [PromiseRow(id=i, owner="alice", user_id=USER, description=i, type="sum",
                    params='{"value": 1}', status="pending", attempt=0, retries=0,
                    created_at=now, updated_at=now) for i in ("r", "s")],
        [PromiseEdge(child_id="s", parent_id="r")])
    start_all(workers, producer, database_url)
    wait_until(lambda: all_final(service, ["r", "s"]), 60, what="orphans finished")
    assert service.store.get("s").result == 2  # type: ignore[union-attr]
