"""Online rescale: the shard count changes while producers send, without breaking any order.

Real parts only: a private Redis, the real shard runner (``python -m shardhost.launcher``, the
Procfile's ``shards`` process) or explicit shard workers, and the real ``shardline rescale``
command. Each test's docstring says which breaking change makes it fail.

The rescale under load runs against every shard runtime the runner starts
(``tests.harness.RUNTIMES``: ``SHARD_RUNTIME=solo``, and shard hosts with K=1 and K=4).
The barrier test starts one consumer per shard by hand, in the default (solo) runtime: the
barrier is passed by the ordered task on whichever runtime runs it, and the runner test covers
hosts passing it under load. The supervisor test renders the solo shape (``shardline
supervisor-config --runtime solo``) and checks that a rescale keeps it; the host shape under
supervisord is tests/test_hosts.py's.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from cli.chatload import check_order, delivered_count
from deploy.launcher import PROJECT_DIR, child_env, stop_groups, wait_for_workers
from routing import ChatMessage, dispatch_batch, keys, send, shard_for
from routing.dispatch import publish_task
from routing.envelope import EPOCH_HEADER, SEQ_HEADER
from routing.publish import Outgoing, PublishScript, StaleEpoch
from routing.queues import RELEASE_HELD, SHARD_HOST_QUEUE, SHARD_QUEUE_PREFIX, shard_queue
from routing.shardmap import ShardMap, barrier_states, read_shard_map, switch_epoch
from tests.handlers import GATE_PREFIX
from tests.harness import RUNTIMES, alive, producer_for, runtime_concurrency, wait_until


def _rescale(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``shardline rescale`` command."""
    return subprocess.run([sys.executable, "-m", "cli.main", "rescale", *args], env=env,
                          cwd=PROJECT_DIR, capture_output=True, text=True, timeout=600)


def _moved(output: str) -> float:
    found = re.search(r"moved users: ([0-9.]+)%", output)
    assert found, output
    return float(found.group(1)) / 100


def _mover(old: int, new: int) -> str:
    """A user whose shard differs between ``old`` and ``new`` shards."""
    return next(f"m{n}" for n in range(10_000)
                if shard_for(f"m{n}", old) != shard_for(f"m{n}", new))


def _envelopes(client: redis.Redis) -> dict[str, list[dict[str, Any]]]:
    return {str(q): [json.loads(raw) for raw in client.lrange(q, 0, -1)]
            for q in client.keys(f"{SHARD_QUEUE_PREFIX}*")}


# ---- the epoch fence at publish -------------------------------------------------------


def test_publish_under_a_stale_epoch_enqueues_nothing_and_is_rerouted(producer, rclient):
    """Breaks if the publish script enqueues (or numbers, or claims) anything from a batch
    routed under an epoch that is no longer the map's, or if routing.dispatch does not then
    re-route the batch under the new map at once (its message would go to the user's old
    shard, behind the rescale's barrier marker, and could run after the user's newer ones),
    or if envelopes do not record the epoch they were routed under."""
    user = _mover(4, 6)
    send(producer, ChatMessage(user, "before the switch", message_id="a"))  # caches epoch 0
    switch_epoch(rclient, expected=ShardMap(4, 0), new_count=6, markers=[])
    assert read_shard_map(rclient, 4) == ShardMap(6, 1)

    # The script itself: a batch routed under epoch 0 is refused whole.
    client = redis.Redis.from_url(producer.conf.broker_url)
    stale = Outgoing(user=user, queue=shard_queue(shard_for(user, 4)), task_id="t-stale",
                     envelope='{"stale": true}', claim_key=keys.dedup(user, "stale"))
    with pytest.raises(StaleEpoch) as refused:
        PublishScript(client, 60)([stale], epoch=0)
    assert (refused.value.current, refused.value.count) == (1, 6)
    assert rclient.llen(stale.queue) == 1  # only the message sent before the switch
    assert not rclient.exists(keys.dedup(user, "stale"))
    assert rclient.hget(keys.USER_SEQ, user) == "1"
    assert rclient.get(keys.STALE_EPOCH_PUBLISHES) == "1"

    # dispatch: its cached map says epoch 0; the refusal makes it re-route under epoch 1.
    result = send(producer, ChatMessage(user, "after the switch", message_id="b"))
    assert rclient.get(keys.STALE_EPOCH_PUBLISHES) == "2", "the first try was not fenced"
    queues = _envelopes(rclient)
    old_queue, new_queue = shard_queue(shard_for(user, 4)), shard_queue(shard_for(user, 6))
    assert [e["headers"][EPOCH_HEADER] for e in queues[old_queue]] == [0]
    assert [(e["headers"]["id"], e["headers"][EPOCH_HEADER], e["headers"]["shardline_seq"])
            for e in queues[new_queue]] == [(result.task_id, 1, 2)]
    # Later publishes of this producer need no re-route: one refusal per switch.
    send(producer, ChatMessage(user, "later"))
    assert rclient.get(keys.STALE_EPOCH_PUBLISHES) == "2"


def test_control_messages_are_fenced_too_and_not_numbered(producer, rclient):
    """``publish_task`` (``release_held``, promise notices, dead-letter and catch-up replays)
    after a rescale, from a process whose cached map is the old one. Breaks if it publishes an
    ordered task under the old map (it would land on the user's old shard, behind the barrier
    marker, and could run after the user's newer messages on the new shard), if it numbers a
    control message (a replay's number would be a step back for the order alarm), or if it
    drops the extra headers a replay carries."""
    user = _mover(4, 6)
    send(producer, ChatMessage(user, "before the switch", message_id="a"))  # caches epoch 0
    switch_epoch(rclient, expected=ShardMap(4, 0), new_count=6, markers=[])

    task_id = publish_task(producer, RELEASE_HELD, [user], {}, headers={"x-replay": "kept"})
    assert rclient.get(keys.STALE_EPOCH_PUBLISHES) == "1", "the first try was not fenced"
    queues = _envelopes(rclient)
    [envelope] = queues[shard_queue(shard_for(user, 6))]
    headers = envelope["headers"]
    assert (headers["id"], headers["task"], headers[EPOCH_HEADER]) == (task_id, RELEASE_HELD, 1)
    assert SEQ_HEADER not in headers and headers["x-replay"] == "kept"
    assert rclient.hget(keys.USER_SEQ, user) == "1"
    assert json.loads(base64.b64decode(envelope["body"]))[0] == [user]


#: Worker code sending with Celery's own API across a switch (argv: user, Redis URL).
_DELAY_ACROSS_A_SWITCH = """
import json, sys
import redis
from routing.errors import InvalidDispatch
from routing.shardmap import ShardMap, switch_epoch
from tasks.chat import send_ai_response

user, url = sys.argv[1], sys.argv[2]
refused = []
for option, value in (("link", "a callback"), ("expires", 60), ("countdown", 5)):
    try:
        send_ai_response.apply_async((user, "refused"), **{option: value})
    except InvalidDispatch:
        refused.append(option)
first = send_ai_response.apply_async((user, "before the switch"), {"message_id": "a"})
switch_epoch(redis.Redis.from_url(url), expected=ShardMap(4, 0), new_count=6, markers=[])
second = send_ai_response.delay(user, "after the switch", message_id="b")
again = send_ai_response.delay(user, "after the switch", message_id="b")
print(json.dumps([refused, first.id, second.id, again.id]))
"""


def test_apply_async_of_an_ordered_task_is_fenced_numbered_and_deduplicated(redis_url, rclient):
    """``send_ai_response.apply_async`` / ``.delay`` in a process that cached the map before
    a rescale. Breaks if OrderedTask.apply_async publishes through Celery's router (whose map
    is up to SHARD_MAP_REFRESH_S old: the message sent after the switch would land on the
    user's old shard, behind the barrier marker, and could run after the user's newer
    messages), unnumbered (the order alarm could not check it), or unclaimed (a resend of
    the same message_id would be answered twice); or if it silently drops an option it
    cannot honour (a callback, an expiry) or lets a countdown through."""
    user = _mover(4, 6)
    done = subprocess.run([sys.executable, "-c", _DELAY_ACROSS_A_SWITCH, user, redis_url],
                          env=child_env(redis_url, SHARD_COUNT="4"), cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    refused, first, second, again = json.loads(done.stdout.strip().splitlines()[-1])
    assert refused == ["link", "expires", "countdown"]
    assert rclient.get(keys.STALE_EPOCH_PUBLISHES) == "1", "the first try was not fenced"
    assert again == second, "the resend of message b was published again"
    queues = _envelopes(rclient)
    old_queue, new_queue = shard_queue(shard_for(user, 4)), shard_queue(shard_for(user, 6))

    def sent(queue: str) -> list[tuple[str, int, int]]:
        return [(e["headers"]["id"], e["headers"][EPOCH_HEADER], e["headers"][SEQ_HEADER])
                for e in queues.get(queue, [])]

    assert (sent(old_queue), sent(new_queue)) == ([(first, 0, 1)], [(second, 1, 2)])


# ---- the drain barrier ---------------------------------------------------------------


def test_moved_users_new_messages_wait_for_the_old_shards_backlog(producer, workers, rclient):
    """A moved user's backlog waits on the old shard (its worker not running yet) while
    the user's new messages reach the new shard, whose worker runs. Breaks if the drain
    barrier is removed or leaky (the new shard would answer the new messages before the
    backlog), if users who did not move are held, if the old shard's marker does not release
    the held messages, or if a second rescale is allowed while the first is draining."""
    user = _mover(4, 6)
    old, new = shard_for(user, 4), shard_for(user, 6)
    stay = next(s for s in range(4) if s != old)
    stayer = next(f"s{n}" for n in range(10_000)
                  if shard_for(f"s{n}", 4) == shard_for(f"s{n}", 6) == stay)
    for n in range(10):
        send(producer, ChatMessage(user, f"backlog {n}", extra={"seq": n}))
    out = _rescale(workers.env, "6", "--no-wait")
    assert out.returncode == 0, out.stderr
    print(out.stdout)
    for n in range(10, 15):
        send(producer, ChatMessage(user, f"new {n}", extra={"seq": n}))
    send(producer, ChatMessage(stayer, "not moved", extra={"seq": 0}))

    workers.start_shard(new)
    workers.start_shard(stay)  # the stayer's shard: its user must not wait for anything
    wait_for_workers(producer, [shard_queue(new), shard_queue(stay)])
    wait_until(lambda: rclient.llen(keys.held(user)) == 5, 60, what="the 5 new messages held")
    wait_until(lambda: rclient.xlen(keys.outbox(stayer)) == 1, 60, what="the stayer's reply")
    assert rclient.xlen(keys.outbox(user)) == 0
    assert rclient.smembers(keys.hold(user)) == {f"barrier:1:{old}"}
    assert not rclient.exists(keys.hold(stayer))

    refused = _rescale(workers.env, "3")
    assert refused.returncode != 0 and "still draining" in refused.stderr, refused

    workers.start_shard(old)
    wait_until(lambda: rclient.xlen(keys.outbox(user)) == 15, 90, what="all 15 replies")
    report = check_order(rclient, {user: 15, stayer: 1})
    assert report.ok, report
    assert rclient.hgetall(keys.ORDER_VIOLATIONS) == {}
    assert barrier_states(rclient, 1).get(old) == "released"
    # A held message leaves the held list just after its reply is written.
    wait_until(lambda: not rclient.exists(keys.hold(user), keys.held(user)), 60,
               what="the user's hold and held list gone")


# ---- 4 -> 6 -> 3 under continuous load --------------------------------------------------

PRODUCERS = 3
USERS_PER_PRODUCER = 10


class Producer(threading.Thread):
    """Sends bursts to its own users (1-3 messages each) every 0.5 s until stopped."""

    def __init__(self, url: str, index: int) -> None:
        super().__init__(name=f"producer-{index}", daemon=True)
        self.app = producer_for(url)
        self.users = [f"p{index}u{n}" for n in range(USERS_PER_PRODUCER)]
        self.sent = dict.fromkeys(self.users, 0)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.index = index

    def run(self) -> None:
        round_no = 0
        try:
            while not self.stop.is_set():
                batch = []
                for position, user in enumerate(self.users):
                    for _ in range(1 + (round_no + position) % 3):
                        n = self.sent[user]
                        batch.append(ChatMessage(user, f"{user} #{n}", message_id=f"{user}-{n}",
                                                 proactive=n % 5 == 4, extra={"seq": n}))
                        self.sent[user] += 1
                dispatch_batch(self.app, batch)
                round_no += 1
                self.stop.wait(0.5)
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def _shard_workers(parent: subprocess.Popen[bytes]) -> dict[int, list[int]]:
    """Shard -> pids of the live shard worker processes under ``parent`` (the shard runner
    or supervisord)."""
    found: dict[int, list[int]] = defaultdict(list)
    for child in psutil.Process(parent.pid).children(recursive=True):
        try:
            line = " ".join(child.cmdline())
            if (match := re.search(r"-Q shard\.(\d+) ", line)) and child.status() != "zombie":
                found[int(match.group(1))].append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return dict(found)


#: Shard hosts the runner starts in the host runtimes (fixed: not the machine's core count).
HOSTS = 2


def _runner_env(runtime: str) -> dict[str, str]:
    """The runner's settings for ``runtime`` (one of :data:`RUNTIMES`)."""
    concurrency = runtime_concurrency(runtime)
    if concurrency is None:
        return {"SHARD_RUNTIME": "solo"}
    return {"SHARD_RUNTIME": "hosts", "SHARD_PROCESSES": str(HOSTS),
            "SHARD_CONCURRENCY": str(concurrency)}


def _consumers(runtime: str, runner: subprocess.Popen[bytes], client: redis.Redis,
               shards: int) -> dict[int, list[int]]:
    """Shard -> pids of the live processes under the runner that consume it: a solo worker
    by its ``-Q shard.N``; a shard host by the lease it holds (it takes its shards itself)."""
    if runtime == "solo":
        return _shard_workers(runner)
    hosts = {child.pid for child in psutil.Process(runner.pid).children(recursive=True)
             if (process := _process(child.pid)) and alive(process)
             and f"-Q {SHARD_HOST_QUEUE} " in " ".join(_cmdline(process))}
    found: dict[int, list[int]] = defaultdict(list)
    for shard in range(shards):
        holder = client.hget(keys.shard_lease(shard), "holder")
        if holder and int(str(holder).rpartition(":")[2]) in hosts:
            found[shard].append(int(str(holder).rpartition(":")[2]))
    return dict(found)


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.NoSuchProcess:
        return []


def _started_line(runtime: str, shard: int) -> str:
    """What the runner's log says once a rescale's new shard is consumed."""
    return (f"starting a worker for shard {shard}" if runtime == "solo"
            else f"shard {shard}: lease held")


def _retired_line(runtime: str, shard: int) -> str:
    """What the runner's log says once a shard a rescale removed has drained and is let go."""
    return (f"shard {shard} worker exited 0 after the shard was removed" if runtime == "solo"
            else f"shard {shard} was removed by a rescale and has drained: host")


def _gate_shards(app: Any, shards: range, count: int, gate: str) -> dict[str, int]:
    """One ``gate:`` message on each of ``shards`` (of ``count``), to users of their own: each
    shard stays busy until the test sets the key ``gate``. Returns the users as
    ``check_order``'s expected counts."""
    users = {}
    for shard in shards:
        user = next(f"{gate}-{n}" for n in range(10_000)
                    if shard_for(f"{gate}-{n}", count) == shard)
        send(app, ChatMessage(user, f"{GATE_PREFIX}{gate}", extra={"seq": 0}))
        users[user] = 1
    return users


def _held_users(client: redis.Redis) -> list[str]:
    return [str(k) for k in client.keys(f"{keys.PREFIX}held:*")]


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None  # it exited after it was listed


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_rescale_4_to_6_to_3_under_load(runtime: str, redis_url, rclient, tmp_path: Path):
    """Three producers send continuously to 30 users while the deployment is rescaled from
    4 to 6 to 3 shards by the real command, with the real shard runner following the map.
    Just before each switch the old shards that moved users leave (0-3 for 4 -> 6, 3-5 for
    6 -> 3) get a message that keeps them busy until a moved user is held, so each switch
    exercises the barrier whatever the machine's speed (on an idle shard the markers can pass
    before any moved user's message reaches its new shard). Breaks if any user's replies
    are out of order, missing or duplicated (e.g. no epoch fence, no drain barrier, a held
    message lost or released twice), if the workers' order alarm counts a violation, if a
    shard is ever consumed by two workers or its worker restarts, if the runner does not
    start the new shards or restarts a removed one, or if a removed shard's worker does not
    drain and exit. With shard hosts: if a host does not take the new shards, does not give
    a removed one up once drained (its lease stays), or a host dies and is restarted."""
    started = time.monotonic()
    env = child_env(redis_url, SHARD_COUNT="4", SHARDLINE_HOME=str(tmp_path / "home"),
                    SHARD_MAP_REFRESH_S="0.5", AI_LATENCY_MS="10",
                    AI_HANDLER="tests.handlers:gated", **_runner_env(runtime))
    log_path = tmp_path / "runner.log"
    with open(log_path, "ab") as log:
        runner = subprocess.Popen([sys.executable, "-m", "deploy.shards"], env=env,
                                  cwd=PROJECT_DIR, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    producers = [Producer(redis_url, i) for i in range(PRODUCERS)]
    try:
        watcher = producer_for(redis_url)
        wait_for_workers(watcher, [shard_queue(s) for s in range(4)])
        for p in producers:
            p.start()
        moved = {}
        ballast: dict[str, int] = {}
        for epoch, (before, count, left) in enumerate(((4, 6, range(4)), (6, 3, range(3, 6))),
                                                      start=1):
            time.sleep(4.0)  # under load for a while before the switch
            gate = f"test:gate:{epoch}"
            ballast.update(_gate_shards(watcher, left, before, gate))
            rescale = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "rescale", str(count)], env=env,
                cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                wait_until(lambda: _held_users(rclient), 120, 0.1,
                           what=f"a moved user held by the barrier of epoch {epoch}")
            finally:
                rclient.set(gate, "open")
                stdout, stderr = rescale.communicate(timeout=600)
            assert rescale.returncode == 0, stdout + stderr
            print(stdout)
            moved[count] = _moved(stdout)
            if count == 6:
                wait_for_workers(watcher, [shard_queue(s) for s in range(6)])
        time.sleep(3.0)
        for p in producers:
            p.stop.set()
        for p in producers:
            p.join(60)
            assert p.error is None, p.error
        expected = {u: n for p in producers for u, n in p.sent.items()} | ballast
        total = sum(expected.values())
        wait_until(lambda: delivered_count(rclient) >= total, 300, 0.2, what="every reply")
        # The rescale command returns once the removed shards' leases are released; their
        # processes exit, and the runner notices, a moment later.
        wait_until(lambda: all(_retired_line(runtime, s) in log_path.read_text(errors="replace")
                               for s in (3, 4, 5)),
                   120, 0.2, what="the removed shards let go")
        workers_now = _consumers(runtime, runner, rclient, 6)
        watcher.close()
    finally:
        for p in producers:
            p.stop.set()
        stop_groups([runner], 30)
    runner_log = log_path.read_text(errors="replace")

    report = check_order(rclient, expected)
    assert (report.missing, report.duplicated, report.violations) == (0, 0, 0), report.bad_users
    assert report.answered == total
    assert rclient.hgetall(keys.ORDER_VIOLATIONS) == {}, "the workers' order alarm went off"
    # Every reply names the worker process that ran it: one process per shard node, ever.
    pids: dict[str, set[str]] = defaultdict(set)
    for user in expected:
        for _, entry in rclient.xrange(keys.outbox(user)):
            node, _, pid = entry["worker"].rpartition(":")
            pids[node].add(pid)
    nodes = [f"shard-{s}" for s in range(6)] if runtime == "solo" else [
        f"host-{h}" for h in range(HOSTS)]
    assert sorted(node.partition("@")[0] for node in pids) == nodes
    assert all(len(p) == 1 for p in pids.values()), pids
    # The runner started shards 4 and 5, and let the removed 3..5 go without a restart.
    for shard in (4, 5):
        assert _started_line(runtime, shard) in runner_log
    for shard in (3, 4, 5):
        assert _retired_line(runtime, shard) in runner_log
        assert not rclient.exists(keys.shard_lease(shard))
    assert "; restarting" not in runner_log, "a shard worker or host died and was restarted"
    assert sorted(workers_now) == [0, 1, 2] and all(len(p) == 1 for p in workers_now.values())
    assert read_shard_map(rclient, 4) == ShardMap(3, 2)
    assert set(barrier_states(rclient, 1).values()) == {"released"}
    assert set(barrier_states(rclient, 2).values()) == {"released"}
    assert not rclient.keys(f"{keys.PREFIX}held:*") and not rclient.keys(f"{keys.PREFIX}hold:*")
    released = sum(int(n) for n in re.findall(r"released (\d+) waiting user", runner_log))
    assert released > 0, "no user was ever held: the load did not exercise the barrier"
    print(f"moved fraction 4 -> 6: {moved[6]:.2%} (expected {1 - 4 / 6:.2%}); "
          f"6 -> 3: {moved[3]:.2%} (expected {1 - 3 / 6:.2%}); {total} messages to "
          f"{len(expected)} users; {released} barrier release(s); stale-epoch publishes "
          f"{rclient.get(keys.STALE_EPOCH_PUBLISHES)}; {time.monotonic() - started:.0f}s")


# ---- under supervisor ------------------------------------------------------------------


def test_rescale_with_supervisor_rewrites_and_reloads_the_config(redis_url, rclient,
                                                                  tmp_path: Path):
    """A supervisord host generated by ``shardline supervisor-config`` for shards 0-3 is
    rescaled to 6, then 3, with ``--supervisor`` while a producer sends. Breaks if the config
    is not rewritten for the new count (or loses the file's --no-workloads/--no-beat/--runtime
    choice),
    if supervisorctl reread/update is not run (the shard processes would not follow), if a
    shrink reloads before the removed shards drained (their messages would be lost), or if
    any user's replies end up out of order, missing or duplicated."""
    home = tmp_path / "home"
    home.mkdir()
    env = child_env(redis_url, SHARD_COUNT="4", SHARDLINE_HOME=str(home),
                    SHARD_MAP_REFRESH_S="0.5", AI_LATENCY_MS="10")
    bin_dir = Path(sys.executable).parent
    conf = home / "supervisord.conf"
    conf.write_text(subprocess.run(
        [str(bin_dir / "shardline"), "supervisor-config", "--range", "0-3", "--no-workloads",
         "--no-beat", "--runtime", "solo"], env=env, cwd=PROJECT_DIR, capture_output=True,
        text=True, check=True).stdout)
    with open(home / "supervisord.out", "ab") as out:
        supervisord = subprocess.Popen([str(bin_dir / "supervisord"), "-c", str(conf)],
                                       env=env, cwd=PROJECT_DIR, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    seen: dict[int, psutil.Process] = {}
    producer = Producer(redis_url, 0)
    try:
        watcher = producer_for(redis_url)
        wait_for_workers(watcher, [shard_queue(s) for s in range(4)])
        producer.start()
        for count in (6, 3):
            time.sleep(2.0)
            done = _rescale(env, str(count), "--supervisor")
            assert done.returncode == 0, done.stdout + done.stderr
            print(done.stdout)
            assert f"wrote {conf} for shards 0-{count - 1}" in done.stdout
            wait_until(lambda n=count: sorted(_shard_workers(supervisord)) == list(range(n)),
                       120, 0.2, what=f"supervisord running shards 0-{count - 1}")
            for pids in _shard_workers(supervisord).values():
                seen.update((pid, process) for pid in pids if (process := _process(pid)))
            first_line = conf.read_text().splitlines()[0]
            assert f"--range 0-{count - 1} --no-workloads --no-beat" in first_line
            assert "--runtime solo" in first_line
            assert "[program:workloads]" not in conf.read_text()
        time.sleep(2.0)
        producer.stop.set()
        producer.join(60)
        assert producer.error is None, producer.error
        total = sum(producer.sent.values())
        wait_until(lambda: delivered_count(rclient) >= total, 300, 0.2, what="every reply")
        watcher.close()
    finally:
        producer.stop.set()
        subprocess.run([str(bin_dir / "supervisorctl"), "-c", str(conf), "shutdown"], env=env,
                       capture_output=True, timeout=120)
        try:
            supervisord.wait(120)
        except subprocess.TimeoutExpired:
            supervisord.kill()
            supervisord.wait()
    assert not [p for p in seen.values() if alive(p)]
    report = check_order(rclient, producer.sent)
    assert (report.missing, report.duplicated, report.answered) == (0, 0, total), report
    assert report.violations == 0, report.bad_users
    assert rclient.hgetall(keys.ORDER_VIOLATIONS) == {}
