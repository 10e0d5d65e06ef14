"""Worker subprocesses for one measurement: started here, always stopped here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import TracebackType

from deploy.launcher import PROJECT_DIR, child_env, stop_group


def celery_worker_argv(name: str, *args: str, loglevel: str = "INFO") -> list[str]:
    """A ``celery -A tasks worker`` command line like the shard workers', with ``args``."""
    return [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-n", f"{name}@%h",
            "--without-gossip", "--without-mingle", "-l", loglevel, *args]


class Workers:
    """Each worker runs in its own process group (a prefork worker's children included)."""

    def __init__(self, url: str, log_dir: Path, **env: str) -> None:
        self.log_dir = log_dir
        self.env = child_env(url, **env)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                argv, env=self.env, cwd=PROJECT_DIR, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs.values()]

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"worker {name} exited with {proc.returncode}; "
                                   f"see {self.log_dir / (name + '.log')}")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            stop_group(proc, grace_s=15.0)
        self.procs.clear()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all()
