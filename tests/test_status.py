"""``shardline status`` as an operator runs it (a subprocess) against a known state in Redis.

The state is written with the project's own writers (routing.send, ShardLease, TaskRecorder,
DeadLetterStore, CircuitBreaker); no worker runs, so nothing moves while the CLI reads.
"""

from __future__ import annotations

import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import celeryconfig
from deploy.launcher import PROJECT_DIR, child_env
from metrics.collector import ShardlineCollector
from metrics.readings import deployment_breakers, published_at
from metrics.recorder import TaskRecorder
from routing import ChatMessage, keys, producer_app, queue_for, send
from routing.queues import SEND_AI_RESPONSE, shard_of_queue
from routing.shardmap import read_shard_map, switch_epoch
from services.breaker import AI_BREAKER, CircuitBreaker
from services.deadletter import DeadLetter, DeadLetterStore
from shardhost.lease import ShardLease
from tests.harness import wait_until

PROFILING_TASK = "shardline.jobs.profiling.run"
LLM_TASK = "shardline.jobs.llm.run"


def cli_env(url: str, **extra: str) -> dict[str, str]:
    return child_env(url, SHARD_COUNT="4", COLUMNS="160", NO_COLOR="1", **extra)


def build_state(url: str, rclient: Any) -> dict[str, float]:
    """Queues, a lease, 30 recent completions, dead letters, a duplicate, order violations and
    an open breaker. Returns the times the test needs for age bounds."""
    app = producer_app("status-test", url)
    try:
        users = [f"s{n}" for n in range(500) if shard_of_queue(queue_for(f"s{n}", 4)) == 0][:2]
        before = time.time()
        for user in users:
            send(app, ChatMessage(user, "waiting"))
        send(app, ChatMessage(users[0], "once", message_id="m-1"))
        assert send(app, ChatMessage(users[0], "once", message_id="m-1")).duplicate
        app.send_task(PROFILING_TASK, args=["a"], priority=0)
        app.send_task(PROFILING_TASK, args=["b"], priority=6)
        app.send_task(PROFILING_TASK, args=["c"], priority=6)
        app.send_task(LLM_TASK, args=["d"], priority=9)
    finally:
        app.close()
    ShardLease(rclient, 1, ttl_s=600, holder="host-a:4242").acquire()
    leased = time.time()
    recorder = TaskRecorder(rclient)
    for n in range(30):
        recorder.started(f"t{n}", "shard.1")
        recorder.finished(f"t{n}", SEND_AI_RESPONSE, "SUCCESS")
    for _ in range(2):
        DeadLetterStore(rclient).park(DeadLetter(reason="test"))
    rclient.hset(keys.ORDER_VIOLATIONS, "2", 5)
    try:
        CircuitBreaker(rclient, AI_BREAKER, failures=1, open_s=600).call(lambda: 1 / 0)
    except ZeroDivisionError:
        pass
    oldest = published_at(rclient.lindex("shard.0", -1))
    assert oldest is not None and oldest >= before
    return {"oldest": oldest, "leased": leased}


def rows(out: str) -> dict[str, list[str]]:
    """Table rows by their first cell."""
    found = {}
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if cells:
            found[cells[0]] = cells[1:]
    return found


def seconds(cell: str) -> float:
    assert cell.endswith("s"), cell
    return float(cell[:-1])


def test_status_prints_the_known_state(redis_url, rclient):
    """Breaks if a shard's depth, oldest age, lease holder, heartbeat or recent rate is wrong,
    if a workload queue's priority sub-lists are not told apart, if dead letters, duplicates,
    order violations or the breaker are misreported, or if status and the Prometheus
    collector disagree (they must read through the same functions)."""
    times = build_state(redis_url, rclient)
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "cli.main", "status"], env=cli_env(redis_url),
                          cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120)
    finished = time.time()
    assert done.returncode == 0, done.stderr
    table = rows(done.stdout)

    assert table["shard"] == ["depth", "oldest", "lease holder", "heartbeat", "tasks/s",
                              "out of order"]
    depth, oldest, holder, heartbeat, rate, violations = table["shard.0"]
    assert (depth, holder, heartbeat, rate, violations) == ("3", "none", "-", "0.00", "0")
    assert started - times["oldest"] - 0.05 <= seconds(oldest) <= finished - times["oldest"] + 0.05
    depth, oldest, holder, heartbeat, rate, violations = table["shard.1"]
    assert (depth, oldest, holder, rate, violations) == ("0", "0.0s", "host-a:4242", "0.50", "0")
    assert 0 <= seconds(heartbeat) <= finished - times["leased"] + 0.05
    assert table["shard.2"][-1] == "5" and table["shard.3"][:3] == ["0", "0.0s", "none"]

    assert table["queue"] == ["p0", "p3", "p6", "p9", "depth", "oldest"]
    assert table["profiling"][:5] == ["1", "0", "2", "0", "3"]
    assert table["llm"][:5] == ["0", "0", "0", "1", "1"]
    assert table["promises"] == table["default"] == ["0", "0", "0", "0", "0", "0.0s"]
    assert 0 < seconds(table["profiling"][5]) <= finished - times["oldest"] + 0.05

    assert "dead letters: 2" in done.stdout
    assert "duplicates dropped: 1" in done.stdout
    assert re.search(r"breaker ai: open, 1 consecutive failures, open for 5\d\d\.\ds more",
                     done.stdout), done.stdout

    collector = ShardlineCollector(rclient, default_shard_count=4,
                                   breakers=deployment_breakers(rclient, celeryconfig.settings))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in collector.collect() for s in family.samples}
    for queue, cells in [(q, table[q]) for q in ("shard.0", "shard.1", "shard.2", "shard.3")]:
        assert samples[("shardline_queue_depth", (("queue", queue),))] == int(cells[0])
    assert samples[("shardline_queue_depth", (("queue", "profiling"),))] == 3
    assert samples[("shardline_dead_letters", ())] == 2
    assert samples[("shardline_order_violations_total", (("shard", "2"),))] == 5
    assert math.isclose(samples[("shardline_shard_lease_up", (("shard", "1"),))], 1)


def test_status_watch_redraws_until_interrupted(redis_url, rclient, tmp_path: Path):
    """Breaks if --watch draws once and stops reading (a change made while it runs never
    shows), or if Ctrl-C ends it with an error instead of a clean exit."""
    build_state(redis_url, rclient)
    out = tmp_path / "watch.out"
    with open(out, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "status", "--watch", "0.5"],
                                env=cli_env(redis_url, TTY_COMPATIBLE="1"), cwd=PROJECT_DIR,
                                stdout=sink, stderr=subprocess.STDOUT)

    def shown() -> str:  # without the terminal's escape sequences
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.read_text())

    try:
        wait_until(lambda: "dead letters: 2" in shown(), 60, what="the first drawing")
        DeadLetterStore(rclient).park(DeadLetter(reason="while watching"))
        wait_until(lambda: "dead letters: 3" in shown(), 60, what="a redrawing")
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    assert code == 0, out.read_text()[-2000:]


def test_status_follows_the_shard_map_and_shows_a_draining_shard(redis_url, rclient):
    """Breaks if status or the collector read the shard count from SHARD_COUNT instead of the
    shard map in Redis, if a shard a rescale removed disappears while messages still wait on
    it, or if an empty removed shard is still listed."""
    app = producer_app("status-test", redis_url)
    try:
        users = [f"d{n}" for n in range(500) if shard_of_queue(queue_for(f"d{n}", 4)) == 3][:2]
        for user in users:
            send(app, ChatMessage(user, "left behind"))
    finally:
        app.close()
    switch_epoch(rclient, expected=read_shard_map(rclient, 4), new_count=2, markers=[])
    done = subprocess.run([sys.executable, "-m", "cli.main", "status"], env=cli_env(redis_url),
                          cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    table = rows(done.stdout)
    assert "2 shards, epoch 1" in done.stdout
    assert set(table) & {"shard.0", "shard.1", "shard.2", "shard.3 (draining)"} == {
        "shard.0", "shard.1", "shard.3 (draining)"}
    assert table["shard.3 (draining)"][0] == "2"

    collector = ShardlineCollector(rclient, default_shard_count=4)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in collector.collect() for s in family.samples}
    assert samples[("shardline_shards", ())] == 2
    assert samples[("shardline_shard_map_epoch", ())] == 1
    depths = {dict(labels)["queue"]: v for (name, labels), v in samples.items()
              if name == "shardline_queue_depth" and dict(labels)["queue"].startswith("shard.")}
    assert depths == {"shard.0": 0, "shard.1": 0, "shard.3": 2}
