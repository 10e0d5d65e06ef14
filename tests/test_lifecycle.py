"""``shardline run`` stops everything on SIGTERM, and nothing it prints holds the password."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import redis

from deploy.embedded_redis import EmbeddedRedis, free_port
from deploy.launcher import PASSWORD_FILE, PROJECT_DIR, URL_FILE, wait_for_workers
from routing import ChatMessage, ShardRouter, keys, send, shard_for
from routing.queues import WORKLOAD_QUEUES, shard_queue
from tests.handlers import GATE_PREFIX
from tests.harness import alive, producer_for, wait_until

BIN = Path(sys.executable).parent
USER = 7
#: Other credentials the deployment holds (unused by the offline handler and the outbox).
OTHER_SECRETS = {"AI_API_KEY": "sk-test-ai-key-4f1b9c", "TELEGRAM_BOT_TOKEN": "12345:tg-9e2a7d"}


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(SHARDLINE_HOME=str(home), SHARD_COUNT="2", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(PROJECT_DIR), **extra)
    return env


def _kill_all(launcher: subprocess.Popen[bytes], tree: list[psutil.Process]) -> None:
    """After a failure: kill -9 whatever of the deployment still runs (orphans included)."""
    if launcher.poll() is None:
        tree = tree + psutil.Process(launcher.pid).children(recursive=True)
        launcher.kill()
        launcher.wait()
    for process in tree:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:  # /healthz says 503 while degraded: still output
        return str(exc.read().decode())


def test_sigterm_stops_every_process_and_no_output_holds_the_password(tmp_path: Path):
    """Fails if SIGTERM to ``shardline run`` leaves a process running (Python's default
    SIGTERM ended only the launcher: honcho, the workers and the embedded Redis ran on) or
    leaves ``redis.url`` behind; if the shard worker's running message is lost rather than
    handed back; if the embedded Redis has no password or its files are readable by others;
    or if a credential shows in anything printed: the start-up line (it printed the whole
    URL), the workers' logs, ``shardline status``, ``celery inspect stats/conf`` (``conf``
    printed the repr of ``celeryconfig.settings``, URLs and API keys included), the API."""
    home = tmp_path / "home"
    api_port, metrics_port = free_port(), free_port()
    out_file = tmp_path / "run.out"
    env = _env(home, API_PORT=str(api_port), METRICS_PORT=str(metrics_port),
               AI_HANDLER="tests.handlers:gated", **OTHER_SECRETS)
    with open(out_file, "wb") as out:
        launcher = subprocess.Popen([str(BIN / "shardline"), "run"], env=env, cwd=tmp_path,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    printed: list[str] = []
    tree: list[psutil.Process] = []
    try:
        wait_until(lambda: (home / URL_FILE).exists(), 60, what="redis.url")
        url = (home / URL_FILE).read_text().strip()
        password = (home / PASSWORD_FILE).read_text().strip()
        assert len(password) >= 32 and f":{password}@" in url
        assert _mode(home / URL_FILE) == 0o600 and _mode(home / PASSWORD_FILE) == 0o600
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        try:
            redis.Redis(port=port).ping()
            raise AssertionError("the embedded Redis answered without a password")
        except redis.AuthenticationError:
            pass

        # Routed as the deployment's 2 shards, whatever this test process's SHARD_COUNT is.
        producer = producer_for(url, task_routes=(ShardRouter(2),))
        shard = shard_for(USER, 2)
        wait_for_workers(producer, [shard_queue(s) for s in range(2)] + list(WORKLOAD_QUEUES))
        client = redis.Redis.from_url(url, decode_responses=True)
        send(producer, ChatMessage(USER, "hello"))
        wait_until(lambda: client.xlen(keys.OUTBOX_FEED) >= 1, 60, what="a reply")

        for argv in (["shardline", "status"], ["celery", "-A", "tasks", "inspect", "stats"],
                     ["celery", "-A", "tasks", "inspect", "conf"]):
            done = subprocess.run([str(BIN / argv[0]), *argv[1:]], env=env, cwd=PROJECT_DIR,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            printed += [done.stdout, done.stderr]
        printed += [_get(f"http://127.0.0.1:{api_port}/healthz"),
                    _get(f"http://127.0.0.1:{api_port}/metrics"),
                    _get(f"http://127.0.0.1:{metrics_port}/metrics")]

        # The shard worker is running a message when SIGTERM comes, and the gate never opens.
        running = send(producer, ChatMessage(USER, GATE_PREFIX + "test:never-opened"))
        inflight = keys.inflight(shard_queue(shard))
        wait_until(lambda: client.llen(inflight) == 1, 60, what="the gated message running")
        client.close()
        producer.close()

        tree = psutil.Process(launcher.pid).children(recursive=True)
        assert any("redis-server" in " ".join(p.cmdline()) for p in tree)
        assert len(tree) >= 8, [p.cmdline() for p in tree]
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(120) == 0
        wait_until(lambda: not [p for p in tree if alive(p)], 60,
                   what="every process of the deployment to exit")
        assert not (home / URL_FILE).exists()
        assert _mode(home / PASSWORD_FILE) == 0o600
    finally:
        _kill_all(launcher, tree)
    printed.append(out_file.read_text(errors="replace"))
    everything = "\n".join(printed)
    assert "shardline: stopped" in everything and "Redis at redis://:****@" in everything
    for secret in (password, *OTHER_SECRETS.values()):
        assert secret not in everything, everything[everything.find(secret) - 300:][:400]
    for log in (home / "redis").glob("*.log"):
        assert password not in log.read_text(errors="replace")

    # Handed back, not lost: the running message is still in its shard's in-flight list
    # (the shard's next worker restores it to the head of the queue), on the server's AOF.
    with EmbeddedRedis(home / "redis", password=password) as server:
        after = redis.Redis.from_url(server.url, decode_responses=True)
        assert any(running.task_id in item for item in after.lrange(inflight, 0, -1))
        after.close()


def test_demo_prints_no_password(tmp_path: Path):
    """Fails if ``shardline demo`` prints the embedded server's password (its first line
    showed the whole URL)."""
    home = tmp_path / "home"
    done = subprocess.run([str(BIN / "shardline"), "demo", "--users", "2", "--messages", "1"],
                          env=_env(home, API_PORT=str(free_port()),
                                   METRICS_PORT=str(free_port())),
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-3000:]
    password = (home / PASSWORD_FILE).read_text().strip()
    assert "redis://:****@" in said and password not in said
