"""Run one solo Celery worker per shard in ``SHARD_RANGE`` and keep each one running.

This is the ``shards`` process of the Procfile. Each shard queue gets exactly one consumer:
``-P solo -c 1 --prefetch-multiplier 1 -Q shard.N``. A worker that dies is started again.
SIGTERM or SIGINT stops every worker (warm shutdown, then SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import celeryconfig
from routing.queues import shard_queue

#: Seconds a worker gets to finish its task after SIGTERM before it is killed.
STOP_GRACE_S = 30.0


def shard_worker_argv(shard: int, loglevel: str = "INFO") -> list[str]:
    """The command line of the one worker that consumes shard ``shard``."""
    return [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "solo", "-c", "1",
            "--prefetch-multiplier", "1", "-Q", shard_queue(shard), "-n", f"shard-{shard}@%h",
            "--without-gossip", "--without-mingle", "-l", loglevel]


class ShardProcesses:
    def __init__(self, shards: tuple[int, ...], loglevel: str) -> None:
        self.shards = shards
        self.loglevel = loglevel
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def start(self, shard: int) -> None:
        self.procs[shard] = subprocess.Popen(shard_worker_argv(shard, self.loglevel))

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for shard in self.shards:
            self.start(shard)
        while not self.stopping:
            for shard, proc in list(self.procs.items()):
                if proc.poll() is not None and not self.stopping:
                    print(f"shard {shard} worker exited with {proc.returncode}; restarting",
                          file=sys.stderr, flush=True)
                    self.start(shard)
            time.sleep(0.2)
        return self._terminate_all()

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


def main() -> int:
    settings = celeryconfig.settings
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return ShardProcesses(settings.shard_range, settings.log_level).run()


if __name__ == "__main__":
    sys.exit(main())
