"""``python -m deploy.restarting CMD...``: run CMD and start it again whenever it exits.

honcho (``shardline run``) stops every process of the Procfile as soon as one exits, so a
worker that died once (a broker failover it could not ride out, an OOM kill) would take the
API and the exporter down with it. Each Procfile line that is not a supervisor itself runs
under this instead: the child is started again after a backoff (1 s, doubling up to 30 s, back
to 1 s after a run that lasted a minute), and this process only ends when it is told to.

The child stays in this process's group: honcho (and supervisor's ``killasgroup``, systemd's
default ``KillMode``) signal the whole group, so the child gets the SIGTERM itself, once; this
process then stops restarting and exits with the child's status.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from types import FrameType

#: Backoff before a restart: first, cap, and the run length that resets it.
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
HEALTHY_RUN_S = 60.0


class Restarter:
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None

    def stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        backoff = FIRST_BACKOFF_S
        while True:
            started = time.monotonic()
            self.child = subprocess.Popen(self.argv)
            status = self._wait(self.child)
            if self.stopping:
                return status
            if time.monotonic() - started >= HEALTHY_RUN_S:
                backoff = FIRST_BACKOFF_S
            print(f"restarting: {self.argv[0]} exited with status {status}; starting it again "
                  f"in {backoff:g}s", file=sys.stderr, flush=True)
            deadline = time.monotonic() + backoff
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.stopping:
                return status
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    @staticmethod
    def _wait(child: subprocess.Popen[bytes]) -> int:
        while True:
            try:
                return child.wait()
            except InterruptedError:  # a signal arrived; keep waiting for the child
                continue


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m deploy.restarting CMD [ARGS...]", file=sys.stderr)
        return 2
    restarter = Restarter(argv)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, restarter.stop)
    return restarter.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
