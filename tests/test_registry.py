"""The worker service registry: heavy components are built once per worker process."""

from __future__ import annotations

from deploy.launcher import wait_for_workers
from routing import ChatMessage, ShardRouter, dispatch_batch, keys
from tests.harness import wait_until

TASKS = 100


def _builds(rclient) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {k: int(v) for k, v in rclient.hgetall(keys.REGISTRY_BUILDS).items()}


def test_components_built_once_per_process_after_100_tasks(producer, workers, rclient):
    """Fails if any component is built per task (a count above 1) or a prefork child reuses
    its parent's clients instead of building its own (a child pid missing)."""
    workers.env["EXTRA_COMPONENTS"] = "expensive=tests.handlers:expensive_component"
    workers.start_shards(2, producer)
    workers.start_celery("prefork", "-P", "prefork", "-c", "2", "-Q", "shard.2,shard.3")
    wait_for_workers(producer, ["shard.2", "shard.3"])
    dispatch_batch(producer, [ChatMessage(f"user-{i % 40}", f"hello {i}") for i in range(TASKS)])
    wait_until(lambda: rclient.xlen(keys.OUTBOX_FEED) >= TASKS, 120, what="100 replies")
    builds = _builds(rclient)
    pids = {field.split("@", 1)[1] for field in builds}
    # 2 solo shard workers + 2 prefork children; the prefork parent runs no tasks.
    assert len(pids) == 4, builds
    for component in ("redis", "ai", "conversations", "dead_letters", "expensive"):
        per_process = [count for field, count in builds.items()
                       if field.startswith(f"{component}@")]
        assert per_process == [1, 1, 1, 1], (component, builds)


def test_optional_component_that_fails_degrades_gracefully(producer, workers, rclient):
    """Fails if a broken optional component stops the worker (nothing answered) or is
    reported more than once."""
    workers.env["EXTRA_COMPONENTS"] = "vectors=tests.handlers:broken_component"
    workers.start_shards(1, producer)
    producer.conf.task_routes = (ShardRouter(1),)
    dispatch_batch(producer, [ChatMessage(7, f"hi {i}") for i in range(5)])
    wait_until(lambda: rclient.xlen(keys.OUTBOX_FEED) >= 5, 60, what="5 replies")
    log = workers.log("shard-0")
    assert log.count("optional component vectors unavailable") == 1, log[-3000:]
    assert "vectors" not in {f.split("@")[0] for f in _builds(rclient)}
