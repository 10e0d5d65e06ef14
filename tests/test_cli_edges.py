"""The ``shardline`` command at its edges, run as an operator runs it: a subprocess.

Redis down, a busy-loop watch interval, the breaker's threshold, an unknown user's outbox,
``--version``, and Celery's root warning under the launcher.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from deploy.embedded_redis import EmbeddedRedis
from deploy.launcher import PROJECT_DIR, child_env
from routing import keys
from services.breaker import AI_BREAKER
from tests.harness import WorkerSet, wait_until

PASSWORD = "hunter2-not-shown"


def shardline(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``shardline ARGS`` in a subprocess whose REDIS_URL is ``url``."""
    env.setdefault("SHARDLINE_HOME", "/nonexistent")
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=PROJECT_DIR,
                          env=child_env(url, **env), capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def stopped_redis_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Redis that ran and was stopped: nothing listens on its port any more. The URL carries
    a password, which no output may show."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("stopped"))
    server.start()
    port = server.url.rsplit(":", 1)[1].split("/")[0]
    server.stop()
    return f"redis://:{PASSWORD}@127.0.0.1:{port}/0"


@pytest.mark.parametrize("args", [
    ["outbox", "42"], ["jobs", "list"], ["jobs", "status", "abc"], ["jobs", "create", "llm",
                                                                      "--prompt", "q"],
    ["dlq", "list"], ["breaker"], ["rescale", "6", "--no-wait"], ["status"],
    ["send", "42", "hi"],
], ids=" ".join)
def test_commands_say_one_line_when_redis_is_down(stopped_redis_url: str,
                                                  args: list[str]) -> None:
    """Breaks if a command lets the Redis (or broker) error escape as a traceback (they
    printed 58-70 lines), or names the server with its password."""
    done = shardline(stopped_redis_url, *args, PUBLISH_RETRY_S="1")
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ") and ("Redis" in lines[0] or "broker" in lines[0])
    assert "127.0.0.1" in lines[0] and PASSWORD not in done.stderr + done.stdout


def test_status_refuses_a_busy_loop_watch_interval(stopped_redis_url: str) -> None:
    """Breaks if ``status --watch 0`` is accepted again: it redrew in a loop at about 680
    Redis commands per second."""
    done = shardline(stopped_redis_url, "status", "--watch", "0")
    assert done.returncode == 2
    assert "--watch" in done.stderr and "0.5" in done.stderr


def test_outbox_of_an_unknown_user_says_so(redis_url: str) -> None:
    """Breaks if ``outbox`` of a user with no replies prints nothing at all."""
    done = shardline(redis_url, "outbox", "nobody-here")
    assert done.returncode == 0 and done.stdout == ""
    assert done.stderr.strip() == "no replies in the outbox of user 'nobody-here'"


def test_version() -> None:
    """Breaks if ``shardline --version`` is missing or shows another version than the
    installed package's."""
    done = shardline("redis://127.0.0.1:1/0", "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"shardline {version('shardline')}"


def test_breaker_shows_the_workers_threshold(workers: WorkerSet, redis_url: str,
                                             rclient: object) -> None:
    """A worker runs with BREAKER_FAILURES=7, the CLI's shell says 3. Breaks if ``shardline
    breaker`` shows its own environment's threshold instead of the one the workers recorded
    in Redis, or does not say when no worker has recorded one."""
    before = shardline(redis_url, "breaker", BREAKER_FAILURES="3")
    assert before.returncode == 0, before.stderr
    assert "0/3 failures (no worker has recorded its threshold yet" in before.stdout
    workers.env.update(BREAKER_FAILURES="7", SHARD_COUNT="1")
    workers.start_shard(0)
    wait_until(lambda: rclient.exists(keys.breaker_thresholds(AI_BREAKER)),  # type: ignore[attr-defined]
               60, what="the worker to record its breaker thresholds")
    after = shardline(redis_url, "breaker", BREAKER_FAILURES="3")
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip() == "ai breaker: closed, 0/7 failures"


@pytest.mark.skipif(os.geteuid() != 0, reason="Celery warns only when a worker runs as root")
def test_workers_started_by_the_launcher_do_not_repeat_the_root_warning(
        workers: WorkerSet, tmp_path: Path) -> None:
    """Breaks if a worker started with the launcher's environment prints Celery's root
    SecurityWarning again (it flooded ``make run``: 7 lines per worker), or if a worker
    started by hand (ROOT_WARNING unset) stops showing it."""
    workers.start_celery("quiet", "-Q", "default", "-P", "solo")
    workers.env.pop("ROOT_WARNING", None)
    workers.start_celery("by-hand", "-Q", "default", "-P", "solo")
    for name in ("quiet", "by-hand"):
        wait_until(lambda n=name: " ready." in workers.log(n), 60, what=f"worker {name} ready")
    assert "superuser privileges" not in workers.log("quiet")
    assert "superuser privileges" in workers.log("by-hand")
