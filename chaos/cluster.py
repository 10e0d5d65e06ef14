"""The chaos suite's deployment: one private Redis and one solo worker per shard, supervised.

Plays the supervisor (deploy/shards.py): a worker that exits is started again; a worker the
suite kills with SIGKILL is replaced at once. Every process started here is stopped here.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from deploy.embedded_redis import EmbeddedRedis
from deploy.launcher import PROJECT_DIR, child_env, stop_groups
from shardhost.launcher import shard_worker_argv


@dataclass
class Replacement:
    """A worker started in place of one the suite killed."""

    shard: int
    pid: int
    started_at: float  # time.time(), comparable with outbox ``delivered_at``


@dataclass
class ClusterLog:
    kills: int = 0
    redis_restarts: int = 0
    #: Workers that exited on their own (e.g. lease lost) and were started again.
    unplanned_exits: int = 0
    replacements: list[Replacement] = field(default_factory=list)


class ChaosCluster:
    def __init__(self, work_dir: Path, shards: int, env: dict[str, str]) -> None:
        self.work_dir = work_dir
        self.shards = shards
        self.redis = EmbeddedRedis(work_dir / "redis", appendfsync="always")
        self.extra_env = env
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.log = ClusterLog()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor",
                                            daemon=True)

    @property
    def url(self) -> str:
        return self.redis.url

    def start(self) -> None:
        self.redis.start()
        for shard in range(self.shards):
            self._start_worker(shard)
        self._supervisor.start()

    def _start_worker(self, shard: int) -> subprocess.Popen[bytes]:
        env = child_env(self.redis.url, SHARD_COUNT=str(self.shards),
                        SHARDLINE_HOME=str(self.work_dir / "home"), **self.extra_env)
        with open(self.work_dir / f"shard-{shard}.log", "ab") as log:
            proc = subprocess.Popen(shard_worker_argv(shard, "INFO"), env=env, cwd=PROJECT_DIR,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[shard] = proc
        return proc

    def _supervise(self) -> None:
        while not self._stopping.wait(0.2):
            with self._lock:
                for shard, proc in list(self.procs.items()):
                    if proc.poll() is not None and not self._stopping.is_set():
                        self.log.unplanned_exits += 1
                        self._start_worker(shard)

    def kill_random_worker(self, rng: random.Random) -> int:
        """kill -9 one shard worker and start its replacement, as a supervisor would."""
        shard = rng.randrange(self.shards)
        with self._lock:
            proc = self.procs[shard]
            _killpg(proc, signal.SIGKILL)
            proc.wait()
            started_at = time.time()
            new = self._start_worker(shard)
            self.log.kills += 1
            self.log.replacements.append(Replacement(shard, new.pid, started_at))
        return shard

    def restart_redis(self, down_s: float = 0.5) -> None:
        """Crash Redis (SIGKILL) and start it again on the same port and data directory."""
        self.redis.kill()
        time.sleep(down_s)
        self.redis.start()
        self.log.redis_restarts += 1

    def stop(self, grace_s: float = 20.0) -> None:
        self._stopping.set()
        if self._supervisor.is_alive():
            self._supervisor.join()
        with self._lock:
            stop_groups(self.procs.values(), grace_s)
        self.redis.stop()


def _killpg(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
