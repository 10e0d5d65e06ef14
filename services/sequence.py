"""The order alarm: each ordered message that starts is checked against its user's sequence.

``routing.publish`` numbers every user's ordered messages 1, 2, 3... at publish time, in
Redis (header ``shardline_seq``). When one starts on a worker, :class:`SequenceCheck` compares
its number with the highest that started for that user before (``keys.USER_STARTED_SEQ``),
and records it, in one Lua call. A step back or a gap is an order violation: counted per
shard in ``keys.ORDER_VIOLATIONS`` (the metrics exporter reads it) and logged as an error.

What is not a violation, and why:

* **The same number again**: a redelivery after a crash mid-task (the stranded message goes
  back to the head of its shard and runs again).
* **A message already delivered** is not checked (``OrderedTask`` checks after the
  done-marker): a second copy that is skipped changes nothing the user sees, wherever it
  runs. A copy carrying the user's next number is recorded as started, though: it is a
  publish retried after its reply was lost, of a message without a message id to claim
  (``routing.publish``), whose number would otherwise show as a gap before the next one.
* **A user's first number seen**: there is nothing to compare it with (the numbering may
  predate the check, or the record may have been cleared); it becomes the baseline.
* **Messages without the header** are never checked: control messages and re-sends
  (``routing.dispatch.publish_task``: promise notices, dead-letter replays, catch-up
  replays, ``release_held``) and ordered tasks sent by name with Celery's ``app.send_task``
  are not numbered (an ordered task's own ``apply_async`` is: ``tasks.ordered``).

Held messages (``services.hold``) are checked when they actually run, with the number they
were published with: the held list is kept in sequence order, so releasing a hold (a
dead-letter replay or discard, a rescale's drain barrier) gives no violation unless the held
list itself was run out of order. A message parked in the dead-letter store has started, so
the user's next one follows it without a gap. This module only checks and counts; it never
stops, holds or reorders a message.
"""

from __future__ import annotations

import logging
from enum import StrEnum

import redis

from routing import keys
from routing.replies import as_text

log = logging.getLogger(__name__)

# KEYS: started-seq hash, violations hash, done-marker ('' for none). ARGV: user, seq ('' for
# an unnumbered message), shard field.
# Returns the verdict and the highest number that had started before (or false); 'done' when
# the message was delivered already (then nothing is checked, and its number is recorded only
# when it is the next one).
_STARTED = """
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
local seq = tonumber(ARGV[2])
if KEYS[3] ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then
  if seq ~= nil and last ~= nil and seq == last + 1 then
    redis.call('HSET', KEYS[1], ARGV[1], seq)
  end
  return {'done', false}
end
if ARGV[2] == '' then return {'unnumbered', false} end
if last == nil then
  redis.call('HSET', KEYS[1], ARGV[1], seq)
  return {'first', false}
end
if seq == last then return {'repeat', last} end
if seq == last + 1 then
  redis.call('HSET', KEYS[1], ARGV[1], seq)
  return {'next', last}
end
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
if seq > last then
  redis.call('HSET', KEYS[1], ARGV[1], seq)
  return {'gap', last}
end
return {'backwards', last}
"""


class Verdict(StrEnum):
    #: Delivered already (its done-marker exists): not to run, nothing checked.
    DONE = "done"
    #: No sequence number (a control message or a re-send): not checked.
    UNNUMBERED = "unnumbered"
    #: The user's first number seen: the baseline.
    FIRST = "first"
    #: The number right after the last one: in order.
    NEXT = "next"
    #: The last number again: a redelivery, not a violation.
    REPEAT = "repeat"
    #: Skips ahead of the next number: earlier messages did not start (lost or overtaken).
    GAP = "gap"
    #: Below the last number: this message runs after a later one of the same user.
    BACKWARDS = "backwards"

    @property
    def violation(self) -> bool:
        return self in (Verdict.GAP, Verdict.BACKWARDS)


class SequenceCheck:
    """The worker's order check, on one Redis client."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._started = client.register_script(_STARTED)

    def started(self, user: str, seq: int | None, shard: int | str,
                task_id: str | None = None, *, unless_done: bool = False) -> Verdict:
        """Record that ``user``'s message number ``seq`` starts now on ``shard``; a violation
        is counted under ``shard`` and logged. With ``unless_done`` the same call first checks
        the task's done-marker (one round trip for both) and answers ``DONE`` if it exists."""
        done = keys.done(task_id) if unless_done and task_id else ""
        reply = self._started(keys=[keys.USER_STARTED_SEQ, keys.ORDER_VIOLATIONS, done],
                              args=[user, "" if seq is None else seq, shard])
        raw, last = reply
        verdict = Verdict(as_text(raw))
        if verdict.violation:
            log.error("ORDER VIOLATION on shard %s: user %s message %s (task %s) starts after "
                      "number %s (%s)", shard, user, seq, task_id, last, verdict.value)
        return verdict

    def violations(self) -> dict[str, int]:
        """Shard -> violations counted so far."""
        raw = self.redis.hgetall(keys.ORDER_VIOLATIONS)
        return {as_text(k): int(v) for k, v in raw.items()}  # type: ignore[union-attr]
