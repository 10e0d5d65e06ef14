"""The circuit breaker around the AI handler, with its state in Redis so every worker shares it.

States: *closed* (calls go through, consecutive failures are counted), *open* (for
``open_s`` seconds after ``failures`` consecutive failures: nobody calls, callers wait),
*half-open* (the open period ended: the one caller that wins a SET NX probe token calls;
success closes the breaker, failure opens it again).

While open, :meth:`CircuitBreaker.call` *waits* (sleeps, polling) instead of raising: a shard
worker keeps the message at the head of its queue and does not burn its retry attempts on a
backend known to be down. It must never drop, requeue or reorder the call it guards.

A breaker found closed with no failure counted is trusted for :data:`TRUST_CLOSED_S` without
reading Redis again (a shard host makes hundreds of calls a second; the read was a tenth of
its CPU): a failure of this process ends the trust at once, one of another process is seen
within that time. So after another worker opens the breaker, this one may start calls for up
to :data:`TRUST_CLOSED_S` more; those that fail are counted as usual.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar, cast

import redis

from routing import keys

T = TypeVar("T")

#: Name of the breaker every worker puts around the AI handler (``services.registry``).
AI_BREAKER = "ai"
#: Seconds a closed breaker with no failure counted is trusted without a read (module doc).
TRUST_CLOSED_S = 0.25


class BreakerState(StrEnum):
    #: Calls go through; consecutive failures are counted.
    CLOSED = "closed"
    #: Too many failures: nobody calls until the open period ends.
    OPEN = "open"
    #: The open period ended: one probe call decides.
    HALF_OPEN = "half-open"


@dataclass(frozen=True)
class BreakerStatus:
    state: BreakerState
    failures: int
    #: Seconds until the open period ends (0 unless open).
    open_for_s: float
    probing: bool


class CircuitBreaker:
    def __init__(self, client: redis.Redis, name: str = "ai", *, failures: int = 5,
                 open_s: float = 30.0, poll_s: float = 0.2) -> None:
        self.redis = client
        self.name = name
        self.failures = failures
        self.open_s = open_s
        self.poll_s = poll_s
        self._k_failures = keys.breaker_failures(name)
        self._k_open = keys.breaker_open(name)
        self._k_probe = keys.breaker_probe(name)
        #: Whether the thresholds are the ones the workers recorded (see :meth:`as_recorded`).
        self.recorded = False
        #: Monotonic time until which a closed breaker with no failure is trusted unread.
        self._closed_until = 0.0

    @classmethod
    def as_recorded(cls, client: redis.Redis, name: str, *, settings: Any) -> CircuitBreaker:
        """Breaker ``name`` with the thresholds its workers recorded in Redis, for readers
        (CLI, exporter) whose own environment may differ; ``settings``' thresholds only until
        a worker has recorded them (``recorded`` is then False)."""
        raw = cast(dict[str, str], client.hgetall(keys.breaker_thresholds(name)))
        breaker = cls(client, name,
                      failures=int(raw.get("failures") or settings.breaker_failures),
                      open_s=float(raw.get("open_s") or settings.breaker_open_s))
        breaker.recorded = bool(raw)
        return breaker

    def record_thresholds(self) -> None:
        """Write this (worker's) breaker's thresholds where :meth:`as_recorded` reads them."""
        self.redis.hset(keys.breaker_thresholds(self.name),
                        mapping={"failures": self.failures, "open_s": self.open_s})

    def status(self) -> BreakerStatus:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self._k_failures)
            pipe.pttl(self._k_open)
            pipe.exists(self._k_probe)
            raw_failures, open_ttl_ms, probing = pipe.execute()
        failures = int(raw_failures or 0)
        if open_ttl_ms is not None and int(open_ttl_ms) > 0:
            return BreakerStatus(BreakerState.OPEN, failures, int(open_ttl_ms) / 1000,
                                 bool(probing))
        state = BreakerState.HALF_OPEN if failures >= self.failures else BreakerState.CLOSED
        return BreakerStatus(state, failures, 0.0, bool(probing))

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn`` through the breaker: wait while open, probe when half-open."""
        if time.monotonic() < self._closed_until:
            return self._guarded(fn, args, kwargs, probe=False, failures_seen=0)
        while True:
            status = self.status()
            if status.state is BreakerState.CLOSED and not status.failures:
                self._closed_until = time.monotonic() + TRUST_CLOSED_S
            if status.state is BreakerState.CLOSED:
                return self._guarded(fn, args, kwargs, probe=False,
                                     failures_seen=status.failures)
            if status.state is BreakerState.HALF_OPEN and self._win_probe():
                return self._guarded(fn, args, kwargs, probe=True,
                                     failures_seen=status.failures)
            time.sleep(self.poll_s)

    def reset(self) -> None:
        """Close the breaker by hand (operator action)."""
        self._closed_until = 0.0
        self.redis.delete(self._k_failures, self._k_open, self._k_probe)

    def _win_probe(self) -> bool:
        # The token outlives a probe that hangs or dies, so half-open never deadlocks.
        ttl_ms = max(int(self.open_s * 1000), 1000)
        return bool(self.redis.set(self._k_probe, str(time.time()), nx=True, px=ttl_ms))

    def _guarded(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any],
                 *, probe: bool, failures_seen: int) -> T:
        try:
            result = fn(*args, **kwargs)
        except Exception:
            self._record_failure(probe)
            raise
        # A success resets the count. ``failures_seen`` was read just before the call: with
        # none, the common case costs no round trip; a failure another worker records during
        # this call is then reset by the next success instead.
        if probe or failures_seen:
            self.redis.delete(self._k_failures, self._k_probe)
        return result

    def _record_failure(self, probe: bool) -> None:
        self._closed_until = 0.0
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(self._k_failures)
            if probe:
                pipe.delete(self._k_probe)
            count = int(pipe.execute()[0])
        if count >= self.failures:
            self.redis.set(self._k_open, str(time.time()), px=max(int(self.open_s * 1000), 1))


class BreakerGuardedHandler:
    """An AI handler whose ``reply`` goes through a :class:`CircuitBreaker`."""

    def __init__(self, handler: Any, breaker: CircuitBreaker) -> None:
        self.handler = handler
        self.breaker = breaker

    def reply(self, user_id: str, text: str, history: list[Any]) -> str:
        return self.breaker.call(self.handler.reply, user_id, text, history)

    def close(self) -> None:
        closer = getattr(self.handler, "close", None)
        if callable(closer):
            closer()
