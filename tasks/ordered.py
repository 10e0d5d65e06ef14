"""The base of every user-ordered task: runs once, retries in place, never via the broker.

A shard runs one message at a time, so whatever this base does happens before the user's next
message starts. It must never call ``Task.retry()``, ``reject(requeue=True)`` or set an ETA:
each of those puts the message behind the user's later ones (docs/ordering.md).

With ``ORDERED_ON_FAILURE=hold`` a parked message holds its user's later ordered messages
(``services.hold``); this base holds them, and runs them in order once the parked one is
replayed or discarded.

After a rescale, a moved user's messages routed under the new epoch are held the same way,
in every mode, until their old shard has run everything it still had for them
(``services.barrier``). Every message that starts is checked against its user's sequence
number (``services.sequence``): a step back or a gap is counted as an order violation.

A step before the body that raises (the barrier check, the hold, the done-marker and order
check) parks the message in the dead-letter store with the error, as a failed body would be:
raised into Celery, the message would be logged and acknowledged, a silent drop.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from celery import Task

import celeryconfig
from routing.dispatch import send_ordered
from routing.envelope import EPOCH_HEADER, SEQ_HEADER
from routing.errors import InvalidDispatch, InvalidUserId
from routing.queues import shard_of_queue
from routing.router import user_id_of
from routing.userid import canonical_user_id
from services.deadletter import DeadLetter
from services.hold import REPLAY_HEADER, Admission, HeldMessage, HoldStore
from services.registry import services
from services.sequence import Verdict
from tasks.instrumentation import task_metrics

log = logging.getLogger(__name__)

#: apply_async options the ordered publish accepts: headers (passed on), and those it has no
#: use for: the connection (it publishes on its own client, as it ignores ``producer``),
#: Celery's publish retry (it retries for PUBLISH_RETRY_S) and the serializer (JSON only).
_ACCEPTED_PUBLISH_OPTIONS = frozenset({"headers", "connection", "retry", "retry_policy",
                                       "serializer"})

#: Failures that another attempt cannot fix: parked at once.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (InvalidUserId, InvalidDispatch, TypeError)


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential backoff with full jitter (AWS architecture blog, 2015): U(0, min(max, b*2^n))."""
    return random.uniform(0.0, min(max_s, base_s * (2 ** (attempt - 1))))


class OrderedTask(Task):
    acks_late = True
    ignore_result = True

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: Any = None,
                    producer: Any = None, link: Any = None, link_error: Any = None,
                    shadow: Any = None, **options: Any) -> Any:
        """Publish through ``routing.dispatch.send_ordered``, as ``routing.send`` would: checked,
        epoch-fenced, numbered, deduplicated by the ``message_id`` keyword. Celery's own
        publish would route by a shard map up to ``SHARD_MAP_REFRESH_S`` old (near a rescale
        the message could land behind the barrier on the user's old shard) and unnumbered.
        Options that would reorder the message, or that this path cannot honour, raise."""
        for option in ("countdown", "eta", "priority", "queue"):
            if options.get(option) is not None:
                raise InvalidDispatch(
                    f"{self.name} must not be sent with {option}={options[option]!r}: "
                    "it would run out of order with the user's other messages"
                )
        if self.app.conf.task_always_eager:
            return super().apply_async(args, kwargs, task_id, producer, link, link_error,
                                       shadow, **options)
        given = {"link": link, "link_error": link_error, "shadow": shadow, **options}
        unsupported = sorted(k for k, v in given.items()
                             if v is not None and k not in _ACCEPTED_PUBLISH_OPTIONS)
        if unsupported:
            raise InvalidDispatch(
                f"{self.name} cannot be sent with {', '.join(unsupported)}: ordered tasks are "
                f"published by routing.dispatch.send_ordered, which takes only a task id and "
                f"headers"
            )
        result = send_ordered(self.app, self.name, tuple(args or ()), dict(kwargs or {}),
                              task_id=task_id, headers=options.get("headers"))
        return self.AsyncResult(result.task_id)

    #: False for control tasks (``release_held``) that must run even while the user is held.
    holdable = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        hold_mode = celeryconfig.settings.ordered_on_failure == "hold"
        seq, epoch = _header_int(self.request, SEQ_HEADER), _header_int(self.request, EPOCH_HEADER)
        user = _user_of(args, kwargs)
        if user is None:
            return self._run_in_place(args, kwargs, replay_of=None, seq=seq)
        try:
            barrier = services().get("barriers").check_for(user, epoch,
                                                           shard_of_request(self.request))
        except Exception as exc:
            return self._park_unstarted(exc, args, kwargs, replay_of=None)
        if barrier is None and self.holdable and not hold_mode:
            return self._run_in_place(args, kwargs, replay_of=None, seq=seq)  # nothing can hold it
        holds = services().get("holds")
        replay_of = getattr(self.request, REPLAY_HEADER, None) if hold_mode else None
        if replay_of:
            # The parked message itself: it runs although (because) its user is held.
            result = self._run_in_place(args, kwargs, replay_of=replay_of, seq=seq)
            self._drain(holds, user)
            return result
        if not self.holdable:
            self._drain(holds, user)
            return self._run_in_place(args, kwargs, replay_of=None, seq=seq)
        message = HeldMessage(self.name, self.request.id, list(args), dict(kwargs), seq=seq,
                              epoch=epoch)
        while True:
            try:
                admission = holds.admit(user, message, barrier)
            except Exception as exc:
                return self._park_unstarted(exc, args, kwargs, replay_of=None)
            if admission is Admission.HELD:
                # Held behind a parked message (hold mode) or a rescale's drain barrier.
                log.info("%s %s (seq %s) held: user %s is held", self.name, self.request.id,
                         seq, user)
                return None
            if admission is Admission.RUN:
                return self._run_in_place(args, kwargs, replay_of=None, seq=seq)
            self._drain_one(holds, user)

    def _drain(self, holds: HoldStore, user: str) -> None:
        """Run ``user``'s held messages, oldest first, while nothing holds the user."""
        while not holds.is_held(user) and self._drain_one(holds, user):
            pass

    def _drain_one(self, holds: HoldStore, user: str) -> bool:
        held = holds.head(user)
        if held is None:
            return False
        task = self.app.tasks.get(held.task)
        if not isinstance(task, OrderedTask):
            log.error("held message %s names no ordered task %r; dropped", held.id, held.task)
        else:
            log.info("running held message %s %s of user %s", held.task, held.id, user)
            task.push_request(id=held.id, args=held.args, kwargs=held.kwargs,
                              delivery_info=self.request.delivery_info,
                              hostname=self.request.hostname)
            try:
                task._run_in_place(tuple(held.args), held.kwargs, replay_of=None, seq=held.seq)
            finally:
                task.pop_request()
        # Popped only after it ran: a crash in between runs it again, and its done-marker
        # stops a second delivery.
        holds.pop_head(user)
        return True

    def _run_in_place(self, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                      replay_of: str | None, seq: int | None) -> Any:
        """Run once, retrying in place; park when attempts are exhausted. ``seq``: the user's
        sequence number of this message (checked as it starts), ``None`` for unnumbered ones."""
        task_id = self.request.id
        user = _user_of(args, kwargs)
        try:
            if user is not None:  # the done-marker and the order alarm in one round trip
                shard = shard_of_request(self.request)
                verdict = services().get("sequence").started(
                    user, seq, "?" if shard is None else shard, task_id, unless_done=True)
                already_done = verdict is Verdict.DONE
            else:
                already_done = task_id is not None and services().get(
                    "conversations").already_done(task_id)
        except Exception as exc:
            return self._park_unstarted(exc, args, kwargs, replay_of)
        if already_done:
            log.info("%s %s already delivered, not delivering again", self.name, task_id)
            return None
        settings = celeryconfig.settings
        attempt = 0
        while True:
            attempt += 1
            try:
                result = self.run(*args, **kwargs)
            except PERMANENT_ERRORS as exc:
                self._park("rejected", exc, attempt, args, kwargs, replay_of)
                return None
            except Exception as exc:
                if attempt >= settings.ordered_max_attempts:
                    self._park(f"failed after {attempt} attempts", exc, attempt, args, kwargs,
                               replay_of)
                    return None
                if recorder := task_metrics():
                    recorder.retried_in_place(self.name, self._queue())
                delay = backoff_delay(attempt, settings.ordered_retry_base_s,
                                      settings.ordered_retry_max_s)
                log.warning("%s attempt %d failed (%s), retrying in place in %.2fs",
                            self.name, attempt, exc, delay)
                time.sleep(delay)
            else:
                if replay_of and user is not None:
                    services().get("holds").release(user, replay_of)
                return result

    def _park_unstarted(self, exc: Exception, args: tuple[Any, ...], kwargs: dict[str, Any],
                        replay_of: str | None) -> None:
        """A step before the body (barrier, hold, done-marker, order check) raised: park the
        message with the error. Raising instead would make Celery log and ack it: a drop."""
        self._park("failed before it ran", exc, 0, args, kwargs, replay_of)

    def _park(self, reason: str, exc: BaseException, attempts: int,
              args: tuple[Any, ...], kwargs: dict[str, Any], replay_of: str | None) -> None:
        user = _user_of(args, kwargs)
        hold = celeryconfig.settings.ordered_on_failure == "hold"
        letter_id = services().get("dead_letters").park(DeadLetter(
            reason=reason, task=self.name, queue=self._queue(),
            user_id=user, args=list(args), kwargs=kwargs,
            error=f"{type(exc).__name__}: {exc}", attempts=attempts, task_id=self.request.id,
        ), hold=hold, replaces=replay_of)
        if recorder := task_metrics():
            recorder.dead_lettered(self.name, self._queue(), task_id=self.request.id)
        log.error("%s %s parked in the dead-letter store as %s: %s: %s",
                  self.name, self.request.id, letter_id, reason, exc)

    def _queue(self) -> str | None:
        return (self.request.delivery_info or {}).get("routing_key")


def _header_int(request: Any, name: str) -> int | None:
    """A shardline header of the running message (Celery puts message headers on the request)."""
    value = getattr(request, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def shard_of_request(request: Any) -> int | None:
    """The shard whose queue delivered the running message (``None``: not a shard queue)."""
    return shard_of_queue(str((request.delivery_info or {}).get("routing_key") or ""))


def _user_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    try:
        return canonical_user_id(user_id_of(args, kwargs))
    except InvalidUserId:
        return None
