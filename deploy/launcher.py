"""Start a deployment: the embedded Redis when ``REDIS_URL`` is unset, then the Procfile.

Everything started here is stopped here, on normal exit, on an error and on SIGINT/SIGTERM:
the workers first (honcho's own SIGTERM), then the embedded Redis, then its ``redis.url``.

The embedded server requires a password, generated once and kept in
``$SHARDLINE_HOME/redis.password``; that file and ``redis.url`` (which contains it) are
readable by their owner only.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deploy.embedded_redis import EmbeddedRedis, write_private
from routing import keys
from routing.queues import SHARD_HOST_QUEUE, shard_of_queue
from routing.redis_url import client_for

PROJECT_DIR = Path(__file__).resolve().parent.parent


#: In ``$SHARDLINE_HOME``: the embedded server's password (kept) and URL (while it runs).
PASSWORD_FILE = "redis.password"
URL_FILE = "redis.url"


def embedded_password(home: Path) -> str:
    """The embedded server's password: generated on first use, then read from its file."""
    path = home / PASSWORD_FILE
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        kept = ""
    if kept:
        os.chmod(path, 0o600)  # a copy restored from a backup may have lost its mode
        return kept
    password = secrets.token_urlsafe(32)
    write_private(path, password + "\n")
    return password


def stop_on_sigterm() -> None:
    """Make SIGTERM (``docker stop``, ``kill``, systemd) stop this process as Ctrl-C does.

    Python's default for SIGTERM ends the process at once, without unwinding: honcho, the
    workers and the embedded Redis would run on, orphaned. Raising ``KeyboardInterrupt``
    unwinds every ``with`` block, and each stops what it started.
    """
    def interrupt(signum: int, frame: object) -> None:
        # A second SIGTERM (systemd, an impatient user) must not cut the shutdown short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@contextmanager
def redis_for(settings: Any) -> Iterator[str]:
    """Yield the Redis URL to use, starting (and afterwards stopping) a private server if needed."""
    if settings.external_redis_url:
        yield settings.external_redis_url
        return
    server = EmbeddedRedis(settings.home / "redis", appendfsync=settings.redis_appendfsync,
                           password=embedded_password(settings.home))
    url_file = settings.home / URL_FILE
    server.start()
    try:
        write_private(url_file, server.url)
        yield server.url
    finally:
        url_file.unlink(missing_ok=True)
        server.stop()


#: Said once by the launcher when it runs as root, instead of by every worker it starts.
ROOT_NOTICE = ("shardline: running as root; Celery's workers warn about it (SecurityWarning), "
               "once here for all of them: see docs/running.md, \"Running as root\"")


def child_env(redis_url: str, **overrides: str) -> dict[str, str]:
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1",
           "ROOT_WARNING": "once", **overrides}
    # Workers find the project's modules whatever the current directory is.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_DIR), env.get("PYTHONPATH")]))
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    return env


@contextmanager
def procfile_running(redis_url: str, *, processes: list[str] | None = None,
                     quiet: bool = False, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run the Procfile's processes under honcho; stop them all on exit."""
    if os.geteuid() == 0:
        print(ROOT_NOTICE, file=sys.stderr)
    argv = [sys.executable, "-m", "honcho", "-f", str(PROJECT_DIR / "Procfile"),
            "-d", str(PROJECT_DIR), "start"]
    if processes:
        argv.append(",".join(processes))
    out = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(argv, env=child_env(redis_url, **env), stdout=out, stderr=out,
                            start_new_session=True)
    try:
        yield proc
    finally:
        stop_group(proc)


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def stop_groups(procs: Iterable[subprocess.Popen[bytes]], grace_s: float = 30.0) -> None:
    """SIGTERM each process group, wait for all within one grace period, then SIGKILL
    whatever is left of each group (stragglers a leader left behind included)."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """:func:`stop_groups` for one process group."""
    stop_groups([proc], grace_s)


def wait_for_workers(app: Any, queues: list[str], timeout_s: float = 90.0) -> None:
    """Block until every queue in ``queues`` is consumed by a running worker.

    A shard queue counts once a worker consumes it, or, where shard hosts run (a worker
    consumes ``SHARD_HOST_QUEUE``), once its lease is held: a host takes its shards itself."""
    deadline = time.monotonic() + timeout_s
    missing = set(queues)
    while time.monotonic() < deadline:
        replies = app.control.inspect(timeout=1.0).active_queues() or {}
        consumed = {q["name"] for worker in replies.values() for q in worker}
        if SHARD_HOST_QUEUE in consumed:
            consumed |= _leased_shard_queues(app, set(queues) - consumed)
        missing = set(queues) - consumed
        if not missing:
            return
        time.sleep(0.3)
    raise TimeoutError(f"no worker consumes {sorted(missing)} after {timeout_s:.0f}s")


def _leased_shard_queues(app: Any, queues: set[str]) -> set[str]:
    """The shard queues of ``queues`` whose lease some consumer holds now."""
    shards = {q: s for q in queues if (s := shard_of_queue(q)) is not None}
    if not shards:
        return set()
    client = client_for(str(app.conf.broker_url))
    try:
        held = [client.exists(keys.shard_lease(s)) for s in shards.values()]
    finally:
        client.close()
    return {q for q, h in zip(shards, held, strict=True) if h}

