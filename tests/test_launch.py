"""The deployment starts from the Procfile (honcho) or supervisord, serves, and stops clean."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

from deploy.embedded_redis import free_port
from deploy.launcher import PROJECT_DIR, child_env, procfile_running, wait_for_workers
from deploy.supervisor import render
from routing import ChatMessage, keys, send
from routing.queues import MAINTENANCE_QUEUE, WORKLOAD_QUEUES, shard_queue
from tests.harness import alive, wait_until


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _cmdline(proc: psutil.Process) -> str:
    """Its command line; "" for a process that exited since it was listed."""
    try:
        return " ".join(proc.cmdline())
    except psutil.NoSuchProcess:
        return ""


def _all_gone(procs: list[psutil.Process]) -> bool:
    return not [p for p in procs if alive(p)]


def test_procfile_starts_every_process_and_leaves_no_strays(producer, rclient, tmp_path,
                                                             monkeypatch):
    """Fails if a Procfile process does not start (a shard, workload or the maintenance queue
    unconsumed, no reply) or survives the launcher's shutdown (a stray worker)."""
    monkeypatch.setenv("SHARDLINE_HOME", str(tmp_path))
    url = producer.conf.broker_url
    with procfile_running(url, quiet=True, API_PORT=str(free_port()),
                          METRICS_PORT=str(free_port()), SHARD_PROCESSES="2") as proc:
        wait_for_workers(producer, [shard_queue(s) for s in range(4)]
                         + [*WORKLOAD_QUEUES, MAINTENANCE_QUEUE])
        send(producer, ChatMessage(5, "hello"))
        wait_until(lambda: rclient.xlen(keys.OUTBOX_FEED) >= 1, 60, what="a reply")
        children = _descendants(proc.pid)
        names = " ".join(_cmdline(c) for c in children)
        assert names.count("-Q shard-hosts") == 2, names  # SHARD_PROCESSES shard hosts
        assert "beat" in names and "-m api" in names, names
        assert "-m metrics" in names and "-Q maintenance" in names, names
    wait_until(lambda: _all_gone(children), 30, what="every process to exit")


def test_committed_supervisord_conf_is_the_generated_one():
    """Fails if deploy/supervisord.conf was edited by hand and drifted from the generator."""
    assert (PROJECT_DIR / "deploy" / "supervisord.conf").read_text() == render(0, 3, whole=True)


def test_supervisord_runs_a_shard_range(producer, rclient, tmp_path: Path):
    """Fails if the generated solo config does not start one worker per shard of the range,
    or supervisord's shutdown leaves a worker running (the host shape: test_hosts.py)."""
    conf = tmp_path / "supervisord.conf"
    conf.write_text(render(2, 3, directory=str(PROJECT_DIR), python=sys.executable,
                           with_workloads=False, with_beat=False, runtime="solo"))
    env = child_env(producer.conf.broker_url, SHARDLINE_HOME=str(tmp_path))
    bin_dir = Path(sys.executable).parent
    proc = subprocess.Popen([str(bin_dir / "supervisord"), "-c", str(conf)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_workers(producer, ["shard.2", "shard.3"])
        expected = sorted(f"shard-{n}@{os.uname().nodename}" for n in (2, 3))
        replies: dict[str, object] = {}

        def exactly_the_range_answered() -> bool:
            # A reply later than the 1 s timeout looks like a missing worker: ask again.
            nonlocal replies
            replies = producer.control.inspect(timeout=1.0).active_queues() or {}
            return sorted(replies) == expected

        wait_until(exactly_the_range_answered, 60, interval_s=0.5,
                   what=f"exactly {expected} answering active_queues")
        assert sorted(replies) == expected
        children = _descendants(proc.pid)
        assert len(children) >= 2
    finally:
        subprocess.run([str(bin_dir / "supervisorctl"), "-c", str(conf), "shutdown"],
                       env=env, capture_output=True, timeout=60)
        proc.wait(60)
    wait_until(lambda: _all_gone(children), 30, what="every shard worker to exit")
