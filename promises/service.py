"""Creating promise DAGs and moving them forward: dispatch when parents completed, cascade a
failure, notify the user through their shard. Used by the API, the CLI and the workers."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from sqlalchemy.exc import IntegrityError

from jobs.errors import IdTaken, InvalidTransition, InvalidWork, NotOwner, WorkNotFound
from promises.kinds import check_params
from promises.models import PromiseEdge, PromiseRow, PromiseStatus
from promises.store import Promise, PromiseStore
from routing.dispatch import ChatMessage, max_payload_bytes, publish_task, validate
from routing.queues import NOTIFY_PROMISE_DONE
from routing.userid import canonical_user_id

RUN_PROMISE = "shardline.promises.run"
BROKEN = (PromiseStatus.FAILED.value, PromiseStatus.SKIPPED.value, PromiseStatus.CANCELLED.value)


@dataclass(frozen=True)
class PromiseSpec:
    user_id: int | str
    type: str
    description: str = ""
    params: dict[str, Any] | None = None
    parents: Sequence[str] = ()
    #: Optional client-chosen id, so promises created together can name each other.
    id: str | None = None


def _topological(specs: Sequence[PromiseSpec], ids: list[str]) -> None:
    """Refuse a cycle among the new promises (existing ones cannot depend on new ones)."""
    new = set(ids)
    waiting = {i: {p for p in s.parents if p in new} for i, s in zip(ids, specs, strict=True)}
    ready = [i for i, ps in waiting.items() if not ps]
    seen = 0
    while ready:
        done = ready.pop()
        seen += 1
        for i, ps in waiting.items():
            if done in ps:
                ps.discard(done)
                if not ps:
                    ready.append(i)
    if seen < len(ids):
        cyclic = sorted(i for i, ps in waiting.items() if ps)
        raise InvalidWork("parents", f"the promises {cyclic} form a cycle")


class PromiseService:
    def __init__(self, store: PromiseStore, app: Celery, *, on_parent_failure: str = "fail",
                 max_attempts: int = 3) -> None:
        self.store = store
        self.app = app
        self.on_parent_failure = on_parent_failure
        self.max_attempts = max_attempts

    # ---- creation ----
    def create(self, specs: Sequence[PromiseSpec], owner: str) -> list[Promise]:
        """Create a DAG atomically: any bad promise (unknown parent, cycle) creates none."""
        if not specs:
            raise InvalidWork("promises", "must hold at least one promise")
        ids = [s.id or uuid.uuid4().hex for s in specs]
        if len(set(ids)) != len(ids):
            raise InvalidWork("id", "two promises in one request have the same id")
        rows, edges = [], []
        now = time.time()
        for i, (pid, spec) in enumerate(zip(ids, specs, strict=True)):
            try:
                user = canonical_user_id(spec.user_id)
            except ValueError as exc:
                raise InvalidWork(f"promises[{i}].user_id", str(exc)) from None
            params = check_params(spec.type, spec.params or {})
            rows.append(PromiseRow(id=pid, owner=owner, user_id=user,
                                   description=spec.description, type=spec.type,
                                   params=json.dumps(params), status="pending", attempt=0,
                                   retries=0, created_at=now, updated_at=now))
            edges += [PromiseEdge(child_id=pid, parent_id=p) for p in dict.fromkeys(spec.parents)]
        outside = {p for s in specs for p in s.parents} - set(ids)
        known = self.store.existing(sorted(outside))
        unknown = sorted(outside - set(known))
        if unknown:
            raise InvalidWork("parents", f"unknown promise ids {unknown}")
        foreign = sorted(p for p, o in known.items() if o != owner)
        if foreign:
            raise NotOwner(f"parent promises {foreign} belong to another owner")
        clash = sorted(self.store.existing(ids))
        if clash:
            raise IdTaken(f"promise ids {clash} already exist")
        _topological(specs, ids)
        try:
            self.store.insert(rows, edges)
        except IntegrityError as exc:
            raise InvalidWork("id", f"conflicts with an existing promise: {exc.orig}") from None
        for pid in ids:
            self.advance(pid)
        return [p for p in (self.store.get(pid) for pid in ids) if p is not None]

    def owned(self, promise_id: str, owner: str | None) -> Promise:
        promise = self.store.get(promise_id)
        if promise is None:
            raise WorkNotFound(f"no promise {promise_id!r}")
        if owner is not None and promise.owner != owner:
            raise NotOwner(f"promise {promise_id!r} belongs to another owner")
        return promise

    def cancel(self, promise_id: str, owner: str | None) -> Promise:
        self.owned(promise_id, owner)
        if not self.store.cancel(promise_id):
            raise InvalidTransition(
                f"promise {promise_id!r} is {self.owned(promise_id, owner).status.value} "
                "and cannot be cancelled")
        self.finished(self.owned(promise_id, owner))
        return self.owned(promise_id, owner)

    # ---- moving the DAG forward ----
    def advance(self, promise_id: str) -> None:
        """Dispatch a pending promise whose parents all completed; cascade a broken parent."""
        promise = self.store.get(promise_id)
        if promise is None or promise.status != PromiseStatus.PENDING:
            return
        parents = self.store.parent_statuses(promise_id)
        broken = sorted(p for p, s in parents.items() if s in BROKEN)
        if broken:
            status = (PromiseStatus.SKIPPED if self.on_parent_failure == "skip"
                      else PromiseStatus.FAILED)
            if self.store.settle_pending(promise_id, status,
                                         f"parent {broken[0]} {parents[broken[0]]}"):
                self.finished(self.owned(promise_id, None))
            return
        if all(s == PromiseStatus.COMPLETED.value for s in parents.values()):
            self.redispatch(promise, from_status="pending")

    def redispatch(self, promise: Promise, *, from_status: str) -> bool:
        if not self.store.dispatch(promise.id, from_status=from_status, attempt=promise.attempt):
            return False
        self.app.send_task(RUN_PROMISE, args=(promise.id, promise.attempt + 1))
        return True

    def finished(self, promise: Promise) -> None:
        """After a final status was recorded: tell the user, then move the children on."""
        self.notify(promise)
        for child in self.store.children(promise.id):
            self.advance(child)

    def notify(self, promise: Promise) -> None:
        """NOTIFY_PROMISE_DONE on the user's shard; its fixed task id makes a resend a no-op."""
        outcome = promise.error if promise.error else json.dumps(promise.result)
        text = f"Promise {promise.description or promise.id} {promise.status.value}: {outcome}"
        message = ChatMessage(promise.user_id, text[:2000], message_id=f"promise:{promise.id}")
        validate(message, max_payload_bytes())
        publish_task(self.app, NOTIFY_PROMISE_DONE, [message.user_id, message.text],
                     {"promise_id": promise.id, "status": promise.status.value,
                      "message_id": message.message_id, "sent_at": time.time()},
                     task_id=f"promise-done-{promise.id}")
        self.store.mark_notified(promise.id)
