"""The adversarial ordering test: few users, many messages, random durations, proactive
messages interleaved, every shard running. And its control: the same load on a plain
multi-process worker must show violations, which proves the check can fail."""

from __future__ import annotations

import random
import threading

import pytest

from cli.chatload import ChatMessage, chat_load, check_order, delivered_count
from routing import ShardRouter, send, shard_for
from tests.harness import RUNTIMES, wait_until

USERS = [3, 17, "alice", "bob", 99]
MESSAGES = 30


def _load() -> tuple[list[list[ChatMessage]], dict[str, int]]:
    rounds = chat_load(USERS, MESSAGES, proactive_every=3, seed=11)
    expected: dict[str, int] = {}
    for batch in rounds:
        for m in batch:
            expected[str(m.user_id)] = expected.get(str(m.user_id), 0) + 1
    return rounds, expected


def _send_concurrently(app, rounds: list[list[ChatMessage]]) -> int:  # type: ignore[no-untyped-def]
    """Each user's messages from its own producer thread, threads racing each other."""
    per_user: dict[str, list[ChatMessage]] = {}
    for batch in rounds:
        for m in batch:
            per_user.setdefault(str(m.user_id), []).append(m)
    errors: list[BaseException] = []

    def produce(messages: list[ChatMessage]) -> None:
        rng = random.Random()
        try:
            for m in messages:
                send(app, m)
                if rng.random() < 0.2:
                    threading.Event().wait(rng.uniform(0, 0.005))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(msgs,)) for msgs in per_user.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return sum(len(m) for m in per_user.values())


@pytest.mark.parametrize("workers", RUNTIMES, indirect=True)
def test_shards_keep_every_users_order(producer, workers, rclient):
    """Breaks if two messages of one user can run at once or out of turn: e.g. shard workers
    with -c 2, prefetch > 1, a priority or ETA on shard tasks, a router that does not send all
    of a user's tasks to one shard, or a shard host that starts a user's message while an
    earlier one of that user runs or waits (host-k4: several users of a shard at once)."""
    assert len({shard_for(u, 4) for u in USERS}) >= 3, "users should span the shards"
    workers.env["AI_HANDLER"] = "tests.handlers:random_latency"
    workers.start_shards(4, producer)
    rounds, expected = _load()
    total = _send_concurrently(producer, rounds)
    wait_until(lambda: delivered_count(rclient) >= total, 180, what="all replies")
    report = check_order(rclient, expected)
    assert report.answered == total
    assert (report.missing, report.duplicated, report.violations) == (0, 0, 0), report.bad_users


def test_plain_prefork_worker_breaks_order(producer, workers, rclient):
    """The control: one prefork worker with -c 4 on a single queue (the naive deployment).
    If this shows no violations, the order check above could not catch any either."""
    producer.conf.task_routes = (ShardRouter(1),)  # everything to shard.0
    workers.env["AI_HANDLER"] = "tests.handlers:random_latency"
    workers.start_celery("naive", "-P", "prefork", "-c", "4", "--prefetch-multiplier", "1",
                         "-Q", "shard.0")
    from deploy.launcher import wait_for_workers

    wait_for_workers(producer, ["shard.0"])
    rounds, expected = _load()
    total = _send_concurrently(producer, rounds)
    wait_until(lambda: delivered_count(rclient) >= total, 180, what="all replies")
    report = check_order(rclient, expected)
    assert report.answered == total
    assert report.violations > 0
