"""The chaos suite's deployment: one private Redis (or, ``--failover``, a master, a replica and
three sentinels) and its shard consumers, supervised.

The consumers are those of a shard runtime: ``hosts`` shard hosts (``shardhost.host``; host
``i`` of ``n`` takes the shards ``s % n == i``, each running up to ``concurrency`` messages of
a shard at once), or one solo worker per shard (``solo``). Plays the supervisor
(``shardhost.launcher``): a consumer process that exits is started again; one the suite kills
with SIGKILL is replaced at once. Every process started here is stopped here.
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
from deploy.sentinel_group import SentinelGroup
from shardhost.launcher import host_worker_argv, shard_worker_argv

#: The shard runtimes a chaos cluster can run (``SHARD_RUNTIME``).
RUNTIMES = ("hosts", "solo")


@dataclass
class Replacement:
    """A consumer process started in place of one the suite killed."""

    unit: int  # the shard of a solo worker, the slot of a host
    pid: int
    started_at: float  # time.time(), comparable with outbox ``delivered_at``


@dataclass
class ClusterLog:
    kills: int = 0
    redis_restarts: int = 0
    #: ``SENTINEL FAILOVER``s run (``--failover``).
    failovers: int = 0
    #: Workers that exited on their own (e.g. lease lost) and were started again.
    unplanned_exits: int = 0
    replacements: list[Replacement] = field(default_factory=list)


class ChaosCluster:
    def __init__(self, work_dir: Path, shards: int, env: dict[str, str], *,
                 runtime: str = "hosts", hosts: int = 2, concurrency: int = 1,
                 sentinel: bool = False) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        self.work_dir = work_dir
        self.shards = shards
        self.runtime = runtime
        self.hosts = hosts
        self.concurrency = concurrency
        #: Consumer processes: one per shard (solo) or per host slot.
        self.units = shards if runtime == "solo" else hosts
        #: One Redis, or (``sentinel``) a master, a replica and three sentinels.
        self.redis: EmbeddedRedis | SentinelGroup = (
            SentinelGroup(work_dir / "redis", appendfsync="always") if sentinel
            else EmbeddedRedis(work_dir / "redis", appendfsync="always"))
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
        for unit in range(self.units):
            self._start_worker(unit)
        self._supervisor.start()

    def _start_worker(self, unit: int) -> subprocess.Popen[bytes]:
        env = child_env(self.redis.url, SHARD_COUNT=str(self.shards),
                        SHARDLINE_HOME=str(self.work_dir / "home"), **self.extra_env)
        if self.runtime == "solo":
            argv, name = shard_worker_argv(unit, "INFO"), f"shard-{unit}"
        else:
            argv, name = host_worker_argv(unit, "INFO"), f"host-{unit}"
            env.update(SHARD_HOST_SLOT=str(unit), SHARD_PROCESSES=str(self.hosts),
                       SHARD_CONCURRENCY=str(self.concurrency))
        with open(self.work_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, env=env, cwd=PROJECT_DIR, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[unit] = proc
        return proc

    def _supervise(self) -> None:
        while not self._stopping.wait(0.2):
            with self._lock:
                for unit, proc in list(self.procs.items()):
                    if proc.poll() is not None and not self._stopping.is_set():
                        self.log.unplanned_exits += 1
                        self._start_worker(unit)

    def kill_random_worker(self, rng: random.Random) -> int:
        """kill -9 one consumer process (a solo worker or a host) and start its replacement,
        as a supervisor would. Returns its shard (solo) or host slot."""
        unit = rng.randrange(self.units)
        with self._lock:
            proc = self.procs[unit]
            _killpg(proc, signal.SIGKILL)
            proc.wait()
            started_at = time.time()
            new = self._start_worker(unit)
            self.log.kills += 1
            self.log.replacements.append(Replacement(unit, new.pid, started_at))
        return unit

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: the replica becomes the master (``sentinel`` clusters)."""
        assert isinstance(self.redis, SentinelGroup)
        self.redis.failover()
        self.log.failovers += 1

    def restart_redis(self, down_s: float = 0.5) -> None:
        """Crash Redis (SIGKILL) and start it again on the same port and data directory."""
        assert isinstance(self.redis, EmbeddedRedis)
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
