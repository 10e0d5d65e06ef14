"""Fixtures: a private Redis server per test module and real worker subprocesses per test."""

from __future__ import annotations

import os

# The suite's deployments have 4 shards unless a test says otherwise (the default, 64, is for
# real deployments); set before anything reads celeryconfig, workers inherit it.
os.environ.setdefault("SHARD_COUNT", "4")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import redis  # noqa: E402

from deploy.embedded_redis import EmbeddedRedis
from tests.harness import WorkerSet, producer_for


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """The module's server, emptied before each test (it is this test's own server)."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def producer(redis_url: str):  # type: ignore[no-untyped-def]
    app = producer_for(redis_url)
    yield app
    app.close()


@pytest.fixture
def workers(request: pytest.FixtureRequest, redis_url: str, tmp_path: Path
            ) -> Iterator[WorkerSet]:
    """Worker subprocesses; the test starts the ones it needs. All are stopped afterwards.

    Solo shard workers unless the test is parametrized over runtimes:
    ``@pytest.mark.parametrize("workers", RUNTIMES, indirect=True)``."""
    ws = WorkerSet(redis_url, tmp_path, getattr(request, "param", "solo"),
                   SHARDLINE_HOME=str(tmp_path / "home"),
                   SHARD_COUNT=os.environ.get("TEST_SHARD_COUNT", "4"))
    yield ws
    ws.stop_all()
