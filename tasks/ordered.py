"""The base of every user-ordered task: runs once, retries in place, never via the broker.

A shard runs one message at a time, so whatever this base does happens before the user's next
message starts. It must never call ``Task.retry()``, ``reject(requeue=True)`` or set an ETA:
each of those puts the message behind the user's later ones (ORDERING.md).
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from celery import Task

import celeryconfig
from routing.errors import InvalidDispatch, InvalidUserId
from services.deadletter import DeadLetter
from services.registry import services

log = logging.getLogger(__name__)

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
        for option in ("countdown", "eta", "priority", "queue"):
            if options.get(option) is not None:
                raise InvalidDispatch(
                    f"{self.name} must not be sent with {option}={options[option]!r}: "
                    "it would run out of order with the user's other messages"
                )
        return super().apply_async(args, kwargs, task_id, producer, link, link_error,
                                   shadow, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task_id = self.request.id
        if task_id and services().get("conversations").already_done(task_id):
            log.info("%s %s already delivered, not delivering again", self.name, task_id)
            return None
        settings = celeryconfig.settings
        attempt = 0
        while True:
            attempt += 1
            try:
                return self.run(*args, **kwargs)
            except PERMANENT_ERRORS as exc:
                self._park("rejected", exc, attempt, args, kwargs)
                return None
            except Exception as exc:
                if attempt >= settings.ordered_max_attempts:
                    self._park(f"failed after {attempt} attempts", exc, attempt, args, kwargs)
                    return None
                delay = backoff_delay(attempt, settings.ordered_retry_base_s,
                                      settings.ordered_retry_max_s)
                log.warning("%s attempt %d failed (%s), retrying in place in %.2fs",
                            self.name, attempt, exc, delay)
                time.sleep(delay)

    def _park(self, reason: str, exc: BaseException, attempts: int,
              args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        user = kwargs.get("user_id", args[0] if args else None)
        delivery = self.request.delivery_info or {}
        services().get("dead_letters").park(DeadLetter(
            reason=reason, task=self.name, queue=delivery.get("routing_key"),
            user_id=None if user is None else str(user), args=list(args), kwargs=kwargs,
            error=f"{type(exc).__name__}: {exc}", attempts=attempts, task_id=self.request.id,
        ))
        log.error("%s %s parked in the dead-letter store: %s: %s",
                  self.name, self.request.id, reason, exc)
