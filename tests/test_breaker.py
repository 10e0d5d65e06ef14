"""The AI circuit breaker: shared state in Redis, one half-open probe, waiting not burning.

The worker's wait runs against every shard runtime (``tests.harness.RUNTIMES``): a host's
thread waits with the message in flight, as a solo worker does."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from deploy.launcher import wait_for_workers
from routing import ChatMessage, keys, queue_for, send
from routing.queues import shard_of_queue
from services import breaker as breaker_module
from services.breaker import BreakerState, CircuitBreaker
from services.redis_client import connect
from tests.handlers import CALLS, FAIL_ALL
from tests.harness import RUNTIMES, wait_until


class Boom(Exception):
    pass


def _fail() -> str:
    raise Boom("down")


def test_breaker_opens_then_lets_exactly_one_probe_through(redis_url):
    """Breaks if the breaker does not open after K consecutive failures, if callers call
    while it is open, or if more than one caller probes when it is half-open (the SET NX
    token is not used). Two breaker objects stand for two workers sharing the state."""
    # open_s is both the open period and the probe token's TTL: 5 s leaves the asserts below
    # ample time to see OPEN, then the one probe, before either expires on a loaded machine.
    a = CircuitBreaker(connect(redis_url), "t", failures=3, open_s=5.0, poll_s=0.02)
    b = CircuitBreaker(connect(redis_url), "t", failures=3, open_s=5.0, poll_s=0.02)
    for breaker in (a, b, a):
        with pytest.raises(Boom):
            breaker.call(_fail)
    assert b.status().state is BreakerState.OPEN
    calls: list[int] = []
    gate = threading.Event()

    def probe() -> str:
        calls.append(1)
        gate.wait(10)  # hold the probe open so every other caller sees half-open
        return "ok"

    threads = [threading.Thread(target=(a if i % 2 else b).call, args=(probe,))
               for i in range(6)]
    for t in threads:
        t.start()
    wait_until(lambda: len(calls) >= 1, 30, what="the probe call")
    assert a.status().state is BreakerState.HALF_OPEN and a.status().probing
    assert len(calls) == 1
    gate.set()
    for t in threads:
        t.join(30)
    assert a.status().state is BreakerState.CLOSED
    assert len(calls) == 6  # the rest went through once the probe closed the breaker


@pytest.mark.parametrize("workers", RUNTIMES, indirect=True)
def test_open_breaker_makes_the_worker_wait_without_burning_attempts(producer, workers,
                                                                     rclient):
    """Breaks if a shard worker keeps calling (and so uses up ORDERED_MAX_ATTEMPTS and parks
    the message) while the breaker is open, instead of waiting with the message at the
    head; or if the breaker is not wired around the registry's AI handler."""
    workers.env.update(AI_HANDLER="tests.handlers:flaky", ORDERED_MAX_ATTEMPTS="4",
                       ORDERED_RETRY_BASE_S="0.01", BREAKER_FAILURES="2", BREAKER_OPEN_S="8")
    # 8 s open: the test deletes FAIL_ALL well before the probe, even on a loaded machine (a
    # probe that still failed would reopen the breaker and make more calls).
    shard = shard_of_queue(queue_for(1))
    assert shard is not None
    workers.start_shard(shard)
    wait_for_workers(producer, [queue_for(1)])
    rclient.set(FAIL_ALL, 1)
    send(producer, ChatMessage(1, "m0", extra={"seq": 0}))
    send(producer, ChatMessage(1, "m1", extra={"seq": 1}))
    wait_until(lambda: rclient.exists(keys.breaker_open("ai")), 60, what="breaker open")
    rclient.delete(FAIL_ALL)  # the backend recovers while the breaker is open
    wait_until(lambda: rclient.xlen(keys.outbox("1")) == 2, 60, what="both replies")
    assert [f["seq"] for _, f in rclient.xrange(keys.outbox("1"))] == ["0", "1"]
    assert rclient.zcard(keys.DEAD_LETTER_INDEX) == 0
    assert int(rclient.get(CALLS) or 0) == 4  # 2 failures, the probe, m1: no call while open
    shown = subprocess.run([sys.executable, "-m", "cli.main", "breaker"], env=workers.env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "closed" in shown.stdout, shown


def test_a_failure_here_ends_the_trust_in_a_closed_breaker(redis_url, monkeypatch):
    """Breaks if a breaker this process has just opened still lets calls through because it
    trusted the closed state it read before (``TRUST_CLOSED_S``, made long here so that only
    the failure can end the trust), or if the trust outlives an operator's reset."""
    monkeypatch.setattr(breaker_module, "TRUST_CLOSED_S", 60.0)
    a = CircuitBreaker(connect(redis_url), "trust", failures=1, open_s=30.0, poll_s=0.02)
    assert a.call(lambda: "ok") == "ok"  # closed, no failure: trusted from here on
    with pytest.raises(Boom):
        a.call(_fail)  # the one failure opens it
    calls: list[int] = []
    caller = threading.Thread(target=a.call, args=(lambda: calls.append(1),), daemon=True)
    caller.start()
    caller.join(1.0)
    assert caller.is_alive() and not calls, "a call went through an open breaker"
    assert a.status().state is BreakerState.OPEN
    a.reset()
    caller.join(30)
    assert calls == [1]
