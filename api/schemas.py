"""Request bodies. Pydantic names the bad field in every 422."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field

from routing.userid import canonical_user_id


def _routable(user_id: Any) -> Any:
    """Routing's own rule (``routing.userid``), before pydantic's lax ``int | str`` would turn
    ``true`` or ``1.0`` into user 1; its ``InvalidUserId`` (a ``ValueError``) becomes a 422."""
    canonical_user_id(user_id)
    return user_id


#: A user id as ``routing`` accepts it: an int >= 0 or a non-empty str (see ``routing.userid``).
UserId = Annotated[int | str, BeforeValidator(_routable)]


class MessageIn(BaseModel):
    user_id: UserId = Field(description="The user; ints and digit strings are the same user.")
    text: str = Field(min_length=1)
    message_id: str | None = Field(default=None, min_length=1, max_length=200,
                                   description="Idempotency key: a repeat is not sent again.")
    chat_id: int | str | None = None


class MessageAccepted(BaseModel):
    task_id: str
    duplicate: bool
    message_id: str


class JobIn(BaseModel):
    kind: Literal["profiling", "llm"]
    priority: int = Field(default=5, ge=0, le=9, description="0 is the highest priority.")
    params: dict[str, Any] = Field(default_factory=dict)


class PromiseIn(BaseModel):
    user_id: UserId
    type: Literal["echo", "sum", "llm", "fail"]
    description: str = Field(default="", max_length=2000)
    params: dict[str, Any] = Field(default_factory=dict)
    parents: list[str] = Field(default_factory=list, max_length=100)
    id: str | None = Field(default=None, min_length=1, max_length=64,
                           pattern=r"^[A-Za-z0-9_.:-]+$")


class PromiseBatchIn(BaseModel):
    promises: list[PromiseIn] = Field(min_length=1, max_length=500)
