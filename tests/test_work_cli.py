"""``shardline jobs`` and ``shardline promises`` as an operator runs them (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

from deploy.launcher import PROJECT_DIR, wait_for_workers
from routing.queues import WORKLOAD_QUEUES


def shardline(workers, *args: str) -> str:  # type: ignore[no-untyped-def]
    done = subprocess.run([sys.executable, "-m", "cli.main", *args], env=workers.env,
                          cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_jobs_and_promises_commands_drive_real_work(workers, producer, tmp_path):
    """Breaks if a CLI command is not registered, cannot reach Redis or the database, or if
    watch returns before the job finished; or if promises create ignores --parent."""
    workers.env.update(SHARD_COUNT="1", DATABASE_URL=f"sqlite:///{tmp_path / 'p.db'}")
    workers.start_shard(0)
    workers.start_celery("workloads", "-Q", ",".join(WORKLOAD_QUEUES), "-c", "2")
    wait_for_workers(producer, ["shard.0", *WORKLOAD_QUEUES])
    job = json.loads(shardline(workers, "jobs", "create", "profiling", "--rows", "30",
                               "--priority", "0", "--json"))
    watched = shardline(workers, "jobs", "watch", job["id"])
    assert "completed" in watched and "30/30" in watched
    status = json.loads(shardline(workers, "jobs", "status", job["id"], "--json"))
    assert status["progress"]["percent"] == 100.0
    assert job["id"] in shardline(workers, "jobs", "list")
    shardline(workers, "promises", "create", "sum", "--user", "7", "--param", "value=4",
              "--id", "root")
    shardline(workers, "promises", "create", "sum", "--user", "7", "--param", "value=1",
              "--parent", "root", "--id", "leaf")
    import time

    deadline = time.monotonic() + 60  # hang guard
    while time.monotonic() < deadline:
        leaf = json.loads(shardline(workers, "promises", "status", "leaf", "--json"))
        if leaf["status"] == "completed":
            break
        time.sleep(0.3)
    assert leaf["result"] == 5 and leaf["parents"] == ["root"]
    assert "leaf" in shardline(workers, "promises", "list")
