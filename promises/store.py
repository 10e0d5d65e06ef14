"""SQL reads and fenced writes of promises. Every state change is a conditional UPDATE whose
row count says whether this caller won; no write trusts a status it read earlier."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from promises.models import FINAL, PromiseEdge, PromiseRow, PromiseStatus


@dataclass
class Promise:
    id: str
    owner: str
    user_id: str
    description: str
    type: str
    params: dict[str, Any]
    status: PromiseStatus
    result: Any
    error: str | None
    attempt: int
    retries: int
    holder: str | None
    parents: list[str]
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    notified_at: float | None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "owner": self.owner, "user_id": self.user_id,
                "description": self.description, "type": self.type, "params": self.params,
                "status": self.status.value, "result": self.result, "error": self.error,
                "retry_count": self.retries, "attempt": self.attempt, "parents": self.parents,
                "created_at": self.created_at, "updated_at": self.updated_at,
                "started_at": self.started_at, "finished_at": self.finished_at}


def _promise(row: PromiseRow, parents: list[str]) -> Promise:
    return Promise(id=row.id, owner=row.owner, user_id=row.user_id,
                   description=row.description, type=row.type, params=json.loads(row.params),
                   status=PromiseStatus(row.status),
                   result=json.loads(row.result) if row.result is not None else None,
                   error=row.error, attempt=row.attempt, retries=row.retries,
                   holder=row.holder, parents=sorted(parents), created_at=row.created_at,
                   updated_at=row.updated_at, started_at=row.started_at,
                   finished_at=row.finished_at, notified_at=row.notified_at)


class PromiseStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def insert(self, rows: Sequence[PromiseRow], edges: Sequence[PromiseEdge]) -> None:
        """All of ``rows`` and ``edges`` in one transaction, or nothing."""
        with Session(self.engine) as session, session.begin():
            session.add_all(rows)
            session.flush()
            session.add_all(edges)

    def existing(self, ids: Sequence[str]) -> dict[str, str]:
        """id -> owner of those of ``ids`` that exist."""
        if not ids:
            return {}
        with Session(self.engine) as session:
            rows = session.execute(select(PromiseRow.id, PromiseRow.owner)
                                   .where(PromiseRow.id.in_(list(ids))))
            return {r.id: r.owner for r in rows}

    def _load(self, session: Session, rows: Sequence[PromiseRow]) -> list[Promise]:
        ids = [r.id for r in rows]
        parents: dict[str, list[str]] = {i: [] for i in ids}
        if ids:
            for edge in session.scalars(select(PromiseEdge)
                                        .where(PromiseEdge.child_id.in_(ids))):
                parents[edge.child_id].append(edge.parent_id)
        return [_promise(r, parents[r.id]) for r in rows]

    def get(self, promise_id: str) -> Promise | None:
        with Session(self.engine) as session:
            row = session.get(PromiseRow, promise_id)
            return self._load(session, [row])[0] if row else None

    def find(self, *, owner: str | None = None, statuses: Sequence[str] | None = None,
             limit: int = 1000) -> list[Promise]:
        with Session(self.engine) as session:
            query = select(PromiseRow).order_by(PromiseRow.created_at.desc()).limit(limit)
            if owner is not None:
                query = query.where(PromiseRow.owner == owner)
            if statuses is not None:
                query = query.where(PromiseRow.status.in_(list(statuses)))
            return self._load(session, list(session.scalars(query)))

    def children(self, promise_id: str) -> list[str]:
        with Session(self.engine) as session:
            return list(session.scalars(select(PromiseEdge.child_id)
                                        .where(PromiseEdge.parent_id == promise_id)))

    def parent_statuses(self, promise_id: str) -> dict[str, str]:
        with Session(self.engine) as session:
            rows = session.execute(
                select(PromiseRow.id, PromiseRow.status)
                .join(PromiseEdge, PromiseEdge.parent_id == PromiseRow.id)
                .where(PromiseEdge.child_id == promise_id))
            return {r.id: r.status for r in rows}

    def _update(self, promise_id: str, where: dict[str, Any], **values: Any) -> bool:
        values["updated_at"] = time.time()
        query = update(PromiseRow).where(PromiseRow.id == promise_id)
        for column, value in where.items():
            query = query.where(getattr(PromiseRow, column) == value)
        with Session(self.engine) as session, session.begin():
            return session.execute(query.values(**values)).rowcount == 1  # type: ignore[attr-defined]

    # ---- fenced transitions ----
    def dispatch(self, promise_id: str, *, from_status: str, attempt: int) -> bool:
        """pending/running(attempt) -> running(attempt + 1), holder cleared."""
        return self._update(promise_id, {"status": from_status, "attempt": attempt},
                            status=PromiseStatus.RUNNING.value, attempt=attempt + 1,
                            holder=None)

    def claim(self, promise_id: str, attempt: int, holder: str) -> bool:
        return self._update(promise_id, {"status": "running", "attempt": attempt},
                            holder=holder, started_at=time.time())

    def touch(self, promise_id: str, attempt: int) -> bool:
        """A run's heartbeat: fresh ``updated_at``, so recovery does not think it lost.

        False once ``attempt`` is no longer the running dispatch (superseded, final, cancelled).
        """
        return self._update(promise_id, {"status": "running", "attempt": attempt})

    def count_retry(self, promise_id: str, attempt: int) -> bool:
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                update(PromiseRow)
                .where(PromiseRow.id == promise_id, PromiseRow.status == "running",
                       PromiseRow.attempt == attempt)
                .values(retries=PromiseRow.retries + 1, updated_at=time.time()))
            return result.rowcount == 1  # type: ignore[attr-defined]

    def record(self, promise_id: str, attempt: int, status: PromiseStatus, *,
               result: Any = None, error: str | None = None) -> bool:
        """The fence: only the current attempt of a running promise records its outcome."""
        return self._update(promise_id, {"status": "running", "attempt": attempt},
                            status=status.value, error=error, finished_at=time.time(),
                            result=None if result is None else json.dumps(result))

    def settle_pending(self, promise_id: str, status: PromiseStatus, error: str) -> bool:
        return self._update(promise_id, {"status": "pending"}, status=status.value,
                            error=error, finished_at=time.time())

    def cancel(self, promise_id: str) -> bool:
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                update(PromiseRow)
                .where(PromiseRow.id == promise_id, PromiseRow.status.not_in(FINAL))
                .values(status="cancelled", error="cancelled by its owner",
                        finished_at=time.time(), updated_at=time.time()))
            return result.rowcount == 1  # type: ignore[attr-defined]

    def mark_notified(self, promise_id: str) -> None:
        self._update(promise_id, {}, notified_at=time.time())

    def unnotified(self, finished_before: float) -> list[Promise]:
        """Final promises whose user was not told yet (the notifier died before it could)."""
        with Session(self.engine) as session:
            query = (select(PromiseRow)
                     .where(PromiseRow.status.in_(list(FINAL)),
                            PromiseRow.notified_at.is_(None),
                            PromiseRow.finished_at < finished_before)
                     .limit(1000))
            return self._load(session, list(session.scalars(query)))
