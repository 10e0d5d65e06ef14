"""The user-ordered tasks: answer a message, send a proactive message, notify a promise.

All of them run on the user's shard (see ``routing.queues.ORDERED_TASKS``), one at a time.
"""

from __future__ import annotations

import os
from typing import Any

from routing import queues
from routing.userid import canonical_user_id
from services.ai.base import Turn
from services.conversation import Fenced
from services.registry import services
from shardhost.fence import commit_fence, lease_lost
from tasks.app import app
from tasks.ordered import OrderedTask


def _deliver(task: OrderedTask, user: str, kind: str, turns: list[Turn], **meta: Any) -> str | None:
    """Store ``turns`` and put the last one in the user's outbox, once per task id."""
    # ``worker`` (node name:pid) says which shard worker answered: the lease tests check it.
    entry = {"kind": kind, "text": turns[-1]["text"], "task_id": task.request.id,
             "worker": f"{task.request.hostname}:{os.getpid()}", **meta}
    try:
        return services().get("conversations").commit(user, task.request.id, turns, entry,
                                                       fence=commit_fence())
    except Fenced as exc:
        lease_lost(str(exc))  # never returns: no ack, the next owner has the message
        raise


@app.task(name=queues.SEND_AI_RESPONSE, base=OrderedTask, bind=True)
def send_ai_response(self: OrderedTask, user_id: int | str, text: str, *,
                     message_id: str | None = None, chat_id: int | str | None = None,
                     sent_at: float | None = None, seq: int | None = None) -> str | None:
    """Load the history, ask the AI handler, store both turns, put the reply in the outbox."""
    user = canonical_user_id(user_id)
    registry = services()
    history = registry.get("conversations").history(user)
    reply = registry.get("ai").reply(user, text, history)
    return _deliver(self, user, "reply",
                    [{"role": "user", "text": text}, {"role": "assistant", "text": reply}],
                    message_id=message_id, chat_id=chat_id, sent_at=sent_at, seq=seq)


@app.task(name=queues.SEND_PROACTIVE_MESSAGE, base=OrderedTask, bind=True)
def send_proactive_message(self: OrderedTask, user_id: int | str, text: str, *,
                           message_id: str | None = None, chat_id: int | str | None = None,
                           sent_at: float | None = None, seq: int | None = None,
                           reason: str | None = None) -> str | None:
    """A message the assistant starts itself; ordered with the user's replies on their shard."""
    return _deliver(self, canonical_user_id(user_id), "proactive",
                    [{"role": "assistant", "text": text}], message_id=message_id,
                    chat_id=chat_id, sent_at=sent_at, seq=seq, reason=reason)


@app.task(name=queues.NOTIFY_PROMISE_DONE, base=OrderedTask, bind=True)
def notify_promise_done(self: OrderedTask, user_id: int | str, text: str, *,
                        promise_id: str | None = None, status: str | None = None,
                        message_id: str | None = None, chat_id: int | str | None = None,
                        sent_at: float | None = None, seq: int | None = None) -> str | None:
    """Tell the user a promise finished, in order with the rest of their conversation."""
    return _deliver(self, canonical_user_id(user_id), "promise",
                    [{"role": "assistant", "text": text}], promise_id=promise_id,
                    status=status, message_id=message_id, chat_id=chat_id, sent_at=sent_at,
                    seq=seq)


class _ReleaseTask(OrderedTask):
    holdable = False


@app.task(name=queues.RELEASE_HELD, base=_ReleaseTask, bind=True)
def release_held(self: OrderedTask, user_id: int | str) -> None:
    """Nothing of its own: arriving on the user's shard, it makes the worker run the user's
    held messages (OrderedTask does that before any task of a user who is no longer held)."""

