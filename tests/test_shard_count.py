"""One shard count per deployment: the shard map in Redis decides from the first start.

A deployment's first consumer (or, before any, its first publisher) writes the map; every
later process follows it whatever its own ``SHARD_COUNT`` says. Real parts: a private Redis,
the real shard runner (``python -m deploy.shards``) and the real CLI in subprocesses.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cli.chatload import chat_load, check_order
from deploy.launcher import PROJECT_DIR, stop_group
from routing import dispatch_batch, keys
from routing.queues import shard_queue
from routing.shardmap import read_shard_map
from tests.harness import WorkerSet, wait_until

USERS = [f"count-user-{n}" for n in range(20)]
BIN = Path(sys.executable).parent


def _runner(workers: WorkerSet, count: int) -> subprocess.Popen[bytes]:
    return workers.start("runner", [sys.executable, "-m", "deploy.shards"],
                         SHARD_COUNT=str(count), SHARD_PROCESSES="1")


def _all_answered(rclient, expected: dict[str, int]) -> bool:  # type: ignore[no-untyped-def]
    return sum(rclient.xlen(keys.outbox(u)) for u in expected) >= sum(expected.values())


def test_a_producer_at_4_follows_a_2_shard_deployment(producer, workers, rclient, redis_url):
    """Fails if a producer (here SHARD_COUNT=4, the test process's) routes by its own count
    once a 2-shard deployment is running: its users on shards 2 and 3 would wait forever on
    queues nothing consumes (the hang guard fails), and the CLI's send likewise."""
    assert producer.conf.broker_url == redis_url
    runner = _runner(workers, 2)
    try:
        wait_until(lambda: all(rclient.exists(keys.shard_lease(s)) for s in (0, 1)), 90,
                   what="the 2-shard deployment holding its leases")
        assert read_shard_map(rclient, 99).count == 2
        expected = {u: 3 for u in USERS}
        for batch in chat_load(list(USERS), 3, seed=3):
            dispatch_batch(producer, batch)
        cli_user = "count-cli-user"
        subprocess.run([str(BIN / "shardline"), "send", cli_user, "hello"], env=workers.env,
                       cwd=PROJECT_DIR, check=True, capture_output=True, timeout=60)
        wait_until(lambda: _all_answered(rclient, expected), 120, what="every reply")
        assert check_order(rclient, expected).ok
        wait_until(lambda: rclient.xlen(keys.outbox(cli_user)) == 1, 60, what="the CLI's reply")
        assert not any(rclient.exists(shard_queue(s)) for s in (2, 3))
    finally:
        stop_group(runner)


def test_a_deployment_started_after_a_producer_follows_its_map(producer, workers, rclient):
    """Fails if the first publish does not fix the deployment's count (no map written) or a
    deployment started later with SHARD_COUNT=2 consumes only shards 0-1 of the 4 its users
    were published to (those on shards 2 and 3 are never answered)."""
    expected = {u: 2 for u in USERS}
    for batch in chat_load(list(USERS), 2, seed=5):
        dispatch_batch(producer, batch)
    assert read_shard_map(rclient, 99).count == 4
    assert any(rclient.exists(shard_queue(s)) for s in (2, 3)), "users should span 4 shards"
    runner = _runner(workers, 2)
    try:
        wait_until(lambda: _all_answered(rclient, expected), 120, what="every reply")
        assert check_order(rclient, expected).ok
        assert "shard map has 4 shards" in workers.log("runner")
    finally:
        stop_group(runner)
