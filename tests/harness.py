"""Real parts for tests: private Redis servers and Celery workers in subprocesses.

Every server runs on a free port with its own data directory; every worker is a real
``celery worker`` process. Nothing here touches the machine's shared Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import redis
from celery import Celery

from deploy.launcher import PROJECT_DIR, child_env, stop_groups, wait_for_workers
from routing.queues import MAINTENANCE_QUEUE, shard_queue
from shardhost.launcher import host_worker_argv, shard_worker_argv
from shardhost.solo_lease import EXIT_LEASE_LOST


def producer_for(url: str, **conf: Any) -> Celery:
    """A producer app on ``url`` (what a real producer builds from celeryconfig)."""
    app = Celery("test-producer")
    app.config_from_object("celeryconfig")
    app.conf.broker_url = url
    app.conf.update(conf)
    return app


#: The shard runtimes a test of the shard runtime runs against: a solo worker per shard, and a
#: shard host (``shardhost.host``) with one message per shard at a time and with four.
RUNTIMES = ("solo", "host-k1", "host-k4")


def runtime_concurrency(runtime: str) -> int | None:
    """SHARD_CONCURRENCY of a host runtime ("host-k4" -> 4); None for "solo"."""
    return int(runtime.removeprefix("host-k")) if runtime.startswith("host-k") else None


class WorkerSet:
    """Worker subprocesses on one Redis; started, killed and stopped by the test.

    ``runtime`` says what consumes a shard (:data:`RUNTIMES`): in a host runtime,
    :meth:`start_shard` starts a shard host that hosts just that shard, so a test can kill,
    pause or replace "the consumer of shard N" the same way in every runtime.
    """

    def __init__(self, url: str, log_dir: Path, runtime: str = "solo", **env: str) -> None:
        self.url = url
        self.log_dir = log_dir
        self.runtime = runtime
        self.env = child_env(url, **env)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], **env: str) -> subprocess.Popen[bytes]:
        running = self.procs.get(name)
        if running is not None and running.poll() is None:
            # Still tracked under another key, so stop_all stops it too (not left over).
            self.procs[f"{name}~{running.pid}"] = running
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, env={**self.env, **env}, cwd=PROJECT_DIR, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_shard(self, shard: int, name: str | None = None) -> subprocess.Popen[bytes]:
        """The consumer of ``shard`` in this runtime (a second one waits as a standby)."""
        name = name or f"shard-{shard}"
        concurrency = runtime_concurrency(self.runtime)
        if concurrency is None:
            return self.start(name, shard_worker_argv(shard, "INFO"))
        return self.start_host(name, str(shard), concurrency)

    def start_host(self, name: str, shard_range: str, concurrency: int, *, slot: int = 0,
                   hosts: int = 1) -> subprocess.Popen[bytes]:
        """A shard host for ``shard_range`` (host ``slot`` of ``hosts``)."""
        return self.start(name, host_worker_argv(slot, "INFO", node=name), SHARD_RANGE=shard_range,
                          SHARD_CONCURRENCY=str(concurrency), SHARD_HOST_SLOT=str(slot),
                          SHARD_PROCESSES=str(hosts))

    def start_shards(self, count: int, app: Celery | None = None) -> None:
        for shard in range(count):
            self.start_shard(shard)
        if app is not None:
            wait_for_workers(app, [shard_queue(s) for s in range(count)])

    def start_celery(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        return self.start(name, [sys.executable, "-m", "celery", "-A", "tasks", "worker",
                                 "-n", f"{name}@%h", "--without-gossip", "--without-mingle",
                                 "-l", "INFO", *args])

    def start_maintenance(self) -> subprocess.Popen[bytes]:
        """The maintenance worker as the Procfile runs it: the maintenance queue only. One per
        set: a test that starts its workloads again keeps the running one."""
        running = self.procs.get("maintenance")
        if running is not None and running.poll() is None:
            return running
        return self.start_celery("maintenance", "-Q", MAINTENANCE_QUEUE, "-c", "1",
                                 "--prefetch-multiplier", "1")

    def kill(self, name: str) -> None:
        """kill -9 of every process of the worker (its process group)."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def stop_all(self, grace_s: float = 20.0) -> None:
        stop_groups(self.procs.values(), grace_s)
        self.procs.clear()

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    # ---- where the runtimes differ: what a consumer shows when it waits or loses a lease ----
    def wait_standing_by(self, name: str, shard: int, holder: str = "") -> None:
        """Wait until consumer ``name`` of ``shard``, started while another owns the shard, is
        up and waiting for it. A solo worker logs "standby for shard.N: lease held by
        <holder>" before its event loop; a host logs the shards it hosts once its keeper runs
        (the keeper then tries the lease every 0.25 s, and takes nothing while it is held)."""
        if self.runtime == "solo":
            needle = f"standby for {shard_queue(shard)}: lease held by {holder}"
        else:
            needle = f"hosting shards [{shard}]"
        wait_until(lambda: needle in self.log(name), 60,
                   what=f"{name} standing by for shard {shard}")

    def wait_lease_lost(self, name: str, shard: int) -> None:
        """Wait until consumer ``name`` has given ``shard`` up on losing its lease. A solo
        worker is its shard: it exits with EXIT_LEASE_LOST. A host keeps running (its other
        shards are unaffected; it stands by for this one) and logs "LEASE LOST: shard N leaves
        host"."""
        proc = self.procs[name]
        if self.runtime == "solo":
            wait_until(lambda: proc.poll() is not None, 60, what=f"{name} to exit")
            assert proc.returncode == EXIT_LEASE_LOST, (proc.returncode, self.log(name))
            assert "LEASE LOST" in self.log(name)
            return
        wait_until(lambda: f"LEASE LOST: shard {shard} leaves host" in self.log(name), 60,
                   what=f"{name} giving shard {shard} up")
        assert proc.poll() is None, f"a host that lost one shard's lease exited: {self.log(name)}"


def alive(process: psutil.Process) -> bool:
    """Running and not a zombie; a process reaped between the two questions is gone."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(predicate: Any, timeout_s: float = 60.0, interval_s: float = 0.05,
               what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail the test with ``what`` after ``timeout_s``.

    The timeout is a hang guard, not a performance assertion.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@contextmanager
def client_for(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()
