"""Start the shard consumers of this machine and keep them running: ``python -m deploy.shards``.

This is the ``shards`` process of the Procfile. With ``SHARD_RUNTIME=hosts`` (the default)
it starts ``SHARD_PROCESSES`` shard hosts (``shardhost.host``), host ``i`` taking the shards
``s`` of ``SHARD_RANGE`` (every shard when unset) with ``s % SHARD_PROCESSES == i``; each host
follows the shard map itself. A host that dies is started again at once, and the new one
breaks the dead one's leases (``holder_is_dead``) and takes its shards over.

With ``SHARD_RUNTIME=solo`` it runs one solo Celery worker per shard instead, the design's
strict original shape: ``-P solo -c 1 --prefetch-multiplier 1 -Q shard.N``. A worker that dies
is started again. Either way SIGTERM or SIGINT stops every child (warm shutdown, then SIGKILL
after a grace period).

In solo mode the runner follows the shard map (``routing.shardmap``), read every
``SHARD_MAP_REFRESH_S``: after ``shardline rescale`` grows the count it starts workers for the
new shards (all of them, or those in an explicit ``SHARD_RANGE``); after a shrink, a removed
shard's worker exits 0 once its shard has drained (``shardhost.solo_retire``) and is not started
again. Under supervisor, ``shardline rescale --supervisor`` regenerates and reloads the config
instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable

import redis

import celeryconfig
from routing.errors import EXIT_AUTH_FAILED
from routing.queues import SHARD_HOST_QUEUE, shard_queue
from shardhost.follower import ShardMapFollower
from shardhost.solo_lease import adopt_shard_map

#: Seconds a worker gets to finish its task after SIGTERM before it is killed.
STOP_GRACE_S = 30.0


def shard_worker_argv(shard: int, loglevel: str = "INFO") -> list[str]:
    """The command line of the one worker that consumes shard ``shard``."""
    return [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "solo", "-c", "1",
            "--prefetch-multiplier", "1", "-Q", shard_queue(shard), "-n", f"shard-{shard}@%h",
            "--without-gossip", "--without-mingle", "-l", loglevel]


def host_worker_argv(slot: int, loglevel: str = "INFO", node: str | None = None) -> list[str]:
    """The command line of shard host ``slot`` (its environment names the slot: SHARD_HOST_SLOT).

    A Celery worker, so remote control, signals and the registry work as for any worker; it
    listens on a queue nothing is published to, and runs its shards on its own threads."""
    return [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "solo", "-c", "1",
            "-Q", SHARD_HOST_QUEUE, "-n", f"{node or f'host-{slot}'}@%h", "--without-gossip",
            "--without-mingle", "-l", loglevel]


class HostProcesses:
    """``count`` shard hosts; one that exits (for whatever reason) is started again."""

    def __init__(self, count: int, loglevel: str) -> None:
        self.count = count
        self.loglevel = loglevel
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def start(self, slot: int) -> None:
        env = dict(os.environ, SHARD_HOST_SLOT=str(slot), SHARD_PROCESSES=str(self.count))
        self.procs[slot] = subprocess.Popen(host_worker_argv(slot, self.loglevel), env=env)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for slot in range(self.count):
            self.start(slot)
        while not self.stopping:
            for slot, proc in list(self.procs.items()):
                if proc.poll() is not None and not self.stopping:
                    if refused_credentials(proc):
                        terminate_all(self.procs.values())
                        return EXIT_AUTH_FAILED
                    _say(f"shard host {slot} exited with {proc.returncode}; restarting")
                    self.start(slot)
            time.sleep(0.2)
        return terminate_all(self.procs.values())

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True


class ShardProcesses:
    def __init__(self, shards: tuple[int, ...], loglevel: str,
                 follower: ShardMapFollower | None = None, poll_s: float = 1.0) -> None:
        self.shards = shards
        self.loglevel = loglevel
        self.follower = follower
        self.poll_s = poll_s
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def start(self, shard: int) -> None:
        self.procs[shard] = subprocess.Popen(shard_worker_argv(shard, self.loglevel))

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for shard in self._initial():
            self.start(shard)
        next_poll = time.monotonic() + self.poll_s
        while not self.stopping:
            if self.follower is not None and time.monotonic() >= next_poll:
                self._follow_map(self.follower)
                next_poll = time.monotonic() + self.poll_s
            for shard, proc in list(self.procs.items()):
                if proc.poll() is not None and not self.stopping:
                    if refused_credentials(proc):
                        terminate_all(self.procs.values())
                        return EXIT_AUTH_FAILED
                    if proc.returncode == 0 and self._retired(shard):
                        _say(f"shard {shard} worker exited 0 after the shard was removed by a "
                             "rescale and drained; not restarting it")
                        del self.procs[shard]
                        continue
                    _say(f"shard {shard} worker exited with {proc.returncode}; restarting")
                    self.start(shard)
            time.sleep(0.2)
        return terminate_all(self.procs.values())

    def _initial(self) -> tuple[int, ...]:
        if self.follower is None:
            return self.shards
        try:
            return tuple(sorted(self.follower.wanted()))
        except redis.RedisError as exc:
            _say(f"cannot read the shard map ({exc}); starting shards {self.shards}")
            return self.shards

    def _follow_map(self, follower: ShardMapFollower) -> None:
        try:
            wanted = follower.wanted()
        except redis.RedisError as exc:
            _say(f"cannot read the shard map ({exc}); keeping the running shards")
            return
        for shard in sorted(wanted - self.procs.keys()):
            _say(f"shard map: starting a worker for shard {shard}")
            self.start(shard)

    def _retired(self, shard: int) -> bool:
        if self.follower is None:
            return False
        try:
            return self.follower.removed(shard)
        except redis.RedisError:
            return False  # restart it; a removed shard's worker exits again once drained

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True


def refused_credentials(proc: subprocess.Popen[bytes]) -> bool:
    """Whether a child exited because Redis refused its credentials: restarting it cannot
    help, so the runner stops everything and exits with the same status."""
    if proc.returncode != EXIT_AUTH_FAILED:
        return False
    _say("a child exited because Redis refused the credentials; stopping (fix REDIS_URL)")
    return True


def terminate_all(procs: Iterable[subprocess.Popen[bytes]]) -> int:
    """SIGTERM every child, wait up to :data:`STOP_GRACE_S` for all, then SIGKILL the rest."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return 0


def _say(text: str) -> None:
    print(f"shards: {text}", file=sys.stderr, flush=True)


def main() -> int:
    settings = celeryconfig.settings
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if settings.redis_url:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=5,
                                      socket_connect_timeout=2)
        adopt_shard_map(client, settings.shard_count, "the shard runner")
    if settings.shard_runtime == "hosts":
        return HostProcesses(settings.shard_processes, settings.log_level).run()
    follower = None
    if settings.redis_url:
        # SHARD_RANGE left at every shard follows the map's count; an explicit one is fixed.
        whole = settings.shard_range == tuple(range(settings.shard_count))
        follower = ShardMapFollower(
            redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2),
            settings.shard_count, None if whole else frozenset(settings.shard_range))
    return ShardProcesses(settings.shard_range, settings.log_level, follower,
                          settings.shard_map_refresh_s).run()


if __name__ == "__main__":
    sys.exit(main())
