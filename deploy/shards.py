"""Run one solo Celery worker per shard in ``SHARD_RANGE`` and keep each one running.

This is the ``shards`` process of the Procfile. Each shard queue gets exactly one consumer:
``-P solo -c 1 --prefetch-multiplier 1 -Q shard.N``. A worker that dies is started again.
SIGTERM or SIGINT stops every worker (warm shutdown, then SIGKILL after a grace period).

The runner follows the shard map (``routing.shardmap``), read every ``SHARD_MAP_REFRESH_S``:
after ``shardline rescale`` grows the count it starts workers for the new shards (all of
them, or those in an explicit ``SHARD_RANGE``); after a shrink, a removed shard's worker
exits 0 once its shard has drained (``tasks.shard_retire``) and is not started again. Under
supervisor, ``shardline rescale --supervisor`` regenerates and reloads the config instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import redis

import celeryconfig
from routing.queues import shard_queue
from routing.shardmap import epoch_counts, read_shard_map
from services.barrier import shard_drained_away

#: Seconds a worker gets to finish its task after SIGTERM before it is killed.
STOP_GRACE_S = 30.0


def shard_worker_argv(shard: int, loglevel: str = "INFO") -> list[str]:
    """The command line of the one worker that consumes shard ``shard``."""
    return [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "solo", "-c", "1",
            "--prefetch-multiplier", "1", "-Q", shard_queue(shard), "-n", f"shard-{shard}@%h",
            "--without-gossip", "--without-mingle", "-l", loglevel]


class ShardMapFollower:
    """Which shards to run by the shard map: every shard of the map (or of ``allowed``), plus
    removed ones that have not drained away yet."""

    def __init__(self, client: redis.Redis, default_count: int,
                 allowed: frozenset[int] | None) -> None:
        self.redis = client
        self.default_count = default_count
        self.allowed = allowed

    def wanted(self) -> set[int]:
        current = read_shard_map(self.redis, self.default_count)
        shards = set(range(current.count))
        if current.epoch:
            before = epoch_counts(self.redis, self.default_count).get(current.epoch - 1, 0)
            shards |= {s for s in range(current.count, before)
                       if not shard_drained_away(self.redis, s, self.default_count)}
        return {s for s in shards if self.allowed is None or s in self.allowed}

    def removed(self, shard: int) -> bool:
        """Whether a rescale took ``shard`` out of the map."""
        return shard >= read_shard_map(self.redis, self.default_count).count


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
                    if proc.returncode == 0 and self._retired(shard):
                        _say(f"shard {shard} worker exited 0 after the shard was removed by a "
                             "rescale and drained; not restarting it")
                        del self.procs[shard]
                        continue
                    _say(f"shard {shard} worker exited with {proc.returncode}; restarting")
                    self.start(shard)
            time.sleep(0.2)
        return self._terminate_all()

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

    def _terminate_all(self) -> int:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs.values():
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
