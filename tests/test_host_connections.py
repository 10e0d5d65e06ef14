"""A shard host's Redis clients lend as many connections as its threads need at once.

redis-py 8 caps a client's pool at 100 connections by default. A host's consumer threads each
hold one in their blocking peek, and its worker threads share the registry's client: past 100
shards (or 100 busy threads) takes and tasks failed with "Too many connections".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cli.chatload import check_order
from routing import ChatMessage, ShardRouter, dispatch_batch, shard_for
from services.redis_client import connect
from tests.harness import WorkerSet, producer_for, wait_until

#: More shards on one host than redis-py's default pool has connections.
SHARDS = 120


def _user_on(shard: int) -> str:
    return next(f"u{shard}-{n}" for n in range(100_000)
                if shard_for(f"u{shard}-{n}", SHARDS) == shard)


@pytest.fixture
def host_workers(redis_url: str, tmp_path: Path) -> Iterator[WorkerSet]:
    ws = WorkerSet(redis_url, tmp_path, "host-k1", SHARDLINE_HOME=str(tmp_path / "home"),
                   SHARD_COUNT=str(SHARDS))
    yield ws
    ws.stop_all()


def test_one_host_answers_on_more_shards_than_a_default_pool_has_connections(
        redis_url: str, rclient: redis.Redis, host_workers: WorkerSet) -> None:
    """One host of 120 shards answers a message on every one of them.

    Fails when the takes' client in ``shardhost.step`` keeps redis-py's default pool of 100:
    the consumers of the last 20 shards never get a connection and their messages wait."""
    app = producer_for(redis_url, task_routes=(ShardRouter(SHARDS),))
    try:
        host_workers.start_host("host", f"0-{SHARDS - 1}", 1)
        messages = [ChatMessage(_user_on(s), "hello", message_id=f"m{s}", extra={"seq": 0})
                    for s in range(SHARDS)]
        dispatch_batch(app, messages)
        expected = {str(m.user_id): 1 for m in messages}
        wait_until(lambda: check_order(rclient, expected).missing == 0, timeout_s=180,
                   what=f"a reply on each of {SHARDS} shards of one host")
        assert check_order(rclient, expected).ok
        assert "Too many connections" not in host_workers.log("host")
    finally:
        app.close()


def test_the_shared_client_lends_more_than_a_hundred_connections_at_once(
        redis_url: str) -> None:
    """150 connections out of one ``connect()`` client at once, as 150 busy host threads take.

    Fails when ``services.redis_client.connect`` keeps redis-py's default pool of 100: the
    101st raises ``MaxConnectionsError``."""
    client = connect(redis_url)
    pool = client.connection_pool
    lent = []
    try:
        for _ in range(150):
            lent.append(pool.get_connection())
        assert len({id(c) for c in lent}) == 150
    finally:
        for connection in lent:
            pool.release(connection)
        client.close()
