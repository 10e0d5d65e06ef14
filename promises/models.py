"""The SQL schema of promises (SQLAlchemy 2): one row per promise, one row per parent edge."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class PromiseStatus(StrEnum):
    #: Waiting for its parents (or for its dispatch after they completed).
    PENDING = "pending"
    #: Dispatched as attempt ``attempt``; only that attempt may record the result.
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: A parent failed and PROMISE_ON_PARENT_FAILURE=skip: never ran.
    SKIPPED = "skipped"

    @property
    def final(self) -> bool:
        return self not in (PromiseStatus.PENDING, PromiseStatus.RUNNING)


FINAL = tuple(s.value for s in PromiseStatus if s.final)


class Base(DeclarativeBase):
    pass


class PromiseRow(Base):
    __tablename__ = "promises"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    user_id: Mapped[str] = mapped_column(String(256))
    description: Mapped[str] = mapped_column(Text, default="")
    type: Mapped[str] = mapped_column(String(32))
    params: Mapped[str] = mapped_column(Text, default="{}")
    status: Mapped[str] = mapped_column(String(16), index=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Dispatch number, bumped at each (re-)dispatch: the fence of the result write.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    #: Failed tries of the work itself (retried in place up to PROMISE_MAX_ATTEMPTS).
    retries: Mapped[int] = mapped_column(Integer, default=0)
    #: ``node|boot|task`` of the run working on it, None while only dispatched.
    holder: Mapped[str | None] = mapped_column(String(300), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    notified_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class PromiseEdge(Base):
    __tablename__ = "promise_parents"

    child_id: Mapped[str] = mapped_column(ForeignKey("promises.id", ondelete="CASCADE"),
                                          primary_key=True)
    parent_id: Mapped[str] = mapped_column(ForeignKey("promises.id", ondelete="CASCADE"),
                                           primary_key=True, index=True)
