"""Parked messages and the user's later ones: ORDERED_ON_FAILURE=hold and skip, replay and
discard through the real `shardline dlq` command, against a live shard worker of every shard
runtime (``tests.harness.RUNTIMES``: with K=4 the other user of alice's shard runs beside her
held messages, never a message of hers beside another)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cli.chatload import check_order
from deploy.launcher import wait_for_workers
from routing import ChatMessage, keys, queue_for, send
from routing.queues import shard_of_queue
from tests.handlers import FAIL_TEXTS
from tests.harness import RUNTIMES, wait_until

USER = "alice"
#: A second user on alice's shard: must keep going while alice is held.
OTHER = next(f"u{n}" for n in range(1000) if queue_for(f"u{n}") == queue_for(USER))


def _start(workers, producer, on_failure: str) -> None:  # type: ignore[no-untyped-def]
    workers.env.update(AI_HANDLER="tests.handlers:flaky", ORDERED_ON_FAILURE=on_failure,
                       ORDERED_MAX_ATTEMPTS="2", ORDERED_RETRY_BASE_S="0.01",
                       BREAKER_FAILURES="1000")
    shard = shard_of_queue(queue_for(USER))
    assert shard is not None
    workers.start_shard(shard)
    wait_for_workers(producer, [queue_for(USER)])


def _send(producer, user: str, seq: int) -> None:  # type: ignore[no-untyped-def]
    send(producer, ChatMessage(user, f"{user}-{seq}", message_id=f"{user}-{seq}",
                               extra={"seq": seq}))


def _wait_hold_gone(rclient, user: str) -> None:  # type: ignore[no-untyped-def]
    """Wait for ``user``'s hold set and held list to be gone: a held message leaves the held
    list just after its reply is written, so the last reply can be seen a moment before."""
    wait_until(lambda: not rclient.exists(keys.hold(user), keys.held(user)), 60,
               what=f"{user}'s hold and held list gone")


def _seqs(rclient, user: str) -> list[int]:  # type: ignore[no-untyped-def]
    return [int(f["seq"]) for _, f in rclient.xrange(keys.outbox(user))]


def _dlq(workers, *args: str) -> str:  # type: ignore[no-untyped-def]
    done = subprocess.run([sys.executable, "-m", "cli.main", "dlq", *args], env=workers.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _only_letter(rclient) -> str:  # type: ignore[no-untyped-def]
    ids = rclient.zrange(keys.DEAD_LETTER_INDEX, 0, -1)
    assert len(ids) == 1, ids
    return str(ids[0])


@pytest.mark.parametrize("workers", RUNTIMES, indirect=True)
def test_hold_then_replay_releases_in_order(producer, workers, rclient):
    """Breaks if hold mode lets a held user's later messages run before the parked one
    (e.g. the admit check is skipped), if it holds other users of the same shard, if replay
    does not run the parked message first, or if messages sent while the held ones are
    released overtake them (the worker must drain the held list before new messages)."""
    _start(workers, producer, "hold")
    rclient.sadd(FAIL_TEXTS, f"{USER}-1")
    for seq in range(4):
        _send(producer, USER, seq)
    for seq in range(2):
        _send(producer, OTHER, seq)
    wait_until(lambda: len(_seqs(rclient, OTHER)) == 2 and rclient.llen(keys.held(USER)) == 2,
               60, what="other user answered, alice's 2 and 3 held")
    assert _seqs(rclient, USER) == [0]
    letter = _only_letter(rclient)
    assert rclient.sismember(keys.hold(USER), letter)
    assert "HOLDS" in _dlq(workers, "list")
    rclient.srem(FAIL_TEXTS, f"{USER}-1")  # the backend is fixed
    _send(producer, USER, 4)
    wait_until(lambda: rclient.llen(keys.held(USER)) == 3, 60, what="alice-4 held")
    _dlq(workers, "replay", letter)
    for seq in (5, 6):  # racing the release
        _send(producer, USER, seq)
    wait_until(lambda: len(_seqs(rclient, USER)) >= 7, 60, what="alice's 7 replies")
    report = check_order(rclient, {USER: 7, OTHER: 2})
    assert report.ok, (_seqs(rclient, USER), report)
    _wait_hold_gone(rclient, USER)
    assert rclient.zcard(keys.DEAD_LETTER_INDEX) == 0


@pytest.mark.parametrize("workers", RUNTIMES, indirect=True)
def test_hold_then_discard_runs_the_held_ones(producer, workers, rclient):
    """Breaks if discarding the parked message leaves the user held (no release sent or
    the release task is held itself), or if the discarded message is run anyway."""
    _start(workers, producer, "hold")
    rclient.sadd(FAIL_TEXTS, f"{USER}-1")
    for seq in range(3):
        _send(producer, USER, seq)
    wait_until(lambda: rclient.llen(keys.held(USER)) == 1, 60, what="alice-2 held")
    _dlq(workers, "discard", _only_letter(rclient))
    wait_until(lambda: len(_seqs(rclient, USER)) == 2, 60, what="alice-2 released")
    _send(producer, USER, 3)
    wait_until(lambda: len(_seqs(rclient, USER)) == 3, 60, what="alice-3")
    assert _seqs(rclient, USER) == [0, 2, 3]
    _wait_hold_gone(rclient, USER)


@pytest.mark.parametrize("workers", RUNTIMES, indirect=True)
def test_skip_mode_goes_on(producer, workers, rclient):
    """Breaks if the default (skip) mode holds anything: the user's later messages must run
    right after the failed one is parked."""
    _start(workers, producer, "skip")
    rclient.sadd(FAIL_TEXTS, f"{USER}-1")
    for seq in range(3):
        _send(producer, USER, seq)
    wait_until(lambda: len(_seqs(rclient, USER)) == 2, 60, what="alice-0 and alice-2")
    assert _seqs(rclient, USER) == [0, 2]
    assert rclient.zcard(keys.DEAD_LETTER_INDEX) == 1
    assert not rclient.exists(keys.hold(USER), keys.held(USER))
