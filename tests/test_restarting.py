"""The launchers restart what exited: under honcho (``shardline run``) a Procfile process that
dies once is started again, and the rest of the stack keeps running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from deploy.launcher import PROJECT_DIR, stop_group
from tests.harness import wait_until

#: Exits on its first run (as a worker killed by a failover would), runs on the second.
ONCE = ("import pathlib, sys, time; p = pathlib.Path(sys.argv[1]); n = int(p.read_text() or 0) "
        "if p.exists() else 0; p.write_text(str(n + 1)); sys.exit(3) if n == 0 else "
        "time.sleep(600)")
FOREVER = "import pathlib, sys, time; pathlib.Path(sys.argv[1]).write_text('up'); time.sleep(600)"


def test_honcho_keeps_the_stack_when_one_process_dies(tmp_path: Path) -> None:
    """A process that exits once is started again and its neighbour keeps running. Fails
    without ``deploy.restarting`` in front of the command (honcho then stops every process
    as soon as one exits: the neighbour dies and the runs file stays at 1)."""
    runs, neighbour = tmp_path / "runs", tmp_path / "neighbour"
    py = sys.executable
    (tmp_path / "Procfile").write_text(
        f"flaky: {py} -m deploy.restarting {py} -c \"{ONCE}\" {runs}\n"
        f"steady: {py} -c \"{FOREVER}\" {neighbour}\n")
    env = dict(os.environ, PYTHONPATH=str(PROJECT_DIR))
    honcho = subprocess.Popen([py, "-m", "honcho", "-f", str(tmp_path / "Procfile"), "-d",
                               str(PROJECT_DIR), "start"], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: runs.exists() and runs.read_text() == "2", 60,
                   what="the flaky process to be started again")
        assert honcho.poll() is None
        assert neighbour.read_text() == "up"
    finally:
        stop_group(honcho, grace_s=20)
    assert honcho.returncode is not None


def test_every_procfile_line_restarts_or_supervises() -> None:
    """Every Procfile process either restarts what exits (the shard runner restarts its
    children) or runs under ``deploy.restarting``. Fails when a line is added bare."""
    for line in (PROJECT_DIR / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if not line.strip() or line.startswith("#"):
            continue
        assert name == "shards" or command.strip().startswith("python -m deploy.restarting "), line


def test_restarting_stops_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM to the group ends the wrapper with its child instead of a restart. Fails if
    the wrapper starts the child again after a signal (it would never stop)."""
    proc = subprocess.Popen([sys.executable, "-m", "deploy.restarting", sys.executable, "-c",
                             FOREVER, str(tmp_path / "up")], cwd=PROJECT_DIR,
                            start_new_session=True)
    wait_until(lambda: (tmp_path / "up").exists(), 30, what="the child")
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(30) != 0
