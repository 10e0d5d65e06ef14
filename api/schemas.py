"""Request and response bodies. Pydantic names the bad field in every 422.

A job's ``params`` and a promise's ``params`` depend on its kind; their schema in the OpenAPI
document is one variant per configured kind, built from the kind's own ``params_model`` (the
model that checks them), so the document accepts exactly what the handlers accept.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)

from jobs.kinds import job_kinds
from jobs.params import JsonInt
from promises.kinds import promise_kinds
from routing.userid import MAX_USER_ID_CHARS, canonical_user_id


def _user_id(value: Any) -> Any:
    canonical_user_id(value)  # the one rule (raises InvalidUserId, a ValueError)
    return value


#: A user id as ``routing.userid`` accepts it: an int >= 0 or a non-empty string. Checked by
#: that module's rule (so a 422 names ``user_id`` itself), described here for the document.
UserIdIn = Annotated[Any, BeforeValidator(_user_id), WithJsonSchema({
    "anyOf": [{"type": "integer", "minimum": 0},
              {"type": "string", "minLength": 1, "maxLength": MAX_USER_ID_CHARS}],
    "description": "The user; ints and digit strings are the same user."})]


class MessageIn(BaseModel):
    user_id: UserIdIn
    text: StrictStr = Field(min_length=1)
    message_id: StrictStr | None = Field(default=None, min_length=1, max_length=200,
                                         description="Idempotency key: a repeat is not sent "
                                                     "again.")
    chat_id: StrictInt | StrictStr | None = None


class MessageAccepted(BaseModel):
    task_id: str
    duplicate: bool
    message_id: str


class WebhookAnswer(BaseModel):
    ok: bool
    ignored: bool | None = None
    task_id: str | None = None
    duplicate: bool | None = None
    message_id: str | None = None


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` references replaced by the definitions themselves."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(copy.deepcopy(defs[ref.removeprefix("#/$defs/")]))
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)  # type: ignore[no-any-return]


def _variants(schema: dict[str, Any], field: str,
              params_models: dict[str, type[BaseModel]]) -> None:
    """Replace ``schema`` (the generic body) by one variant per kind: ``field`` is the kind's
    name, ``params`` its params model; required when that model has a required field."""
    common = {k: v for k, v in schema["properties"].items() if k not in (field, "params")}
    required = [k for k in schema.get("required", []) if k not in (field, "params")]
    variants = []
    for name, model in sorted(params_models.items()):
        params = _inlined(model.model_json_schema())
        variants.append({
            "type": "object", "title": f"{schema['title']} ({name})",
            "properties": {field: {"const": name}, **common, "params": params},
            "required": [*required, field,
                         *(["params"] if params.get("required") else [])],
        })
    description = schema.get("description", "")
    schema.clear()
    schema.update(oneOf=variants, description=description)


def _job_variants(schema: dict[str, Any]) -> None:
    _variants(schema, "kind", {k.name: k.params_model for k in job_kinds().values()})


def _promise_variants(schema: dict[str, Any]) -> None:
    _variants(schema, "type", {k.name: k.params_model for k in promise_kinds().values()})


class JobIn(BaseModel):
    """A job of one of the kinds GET /v1/kinds lists."""

    model_config = ConfigDict(json_schema_extra=_job_variants)

    kind: StrictStr
    priority: JsonInt = Field(default=5, ge=0, le=9, description="0 is the highest priority.")
    # Checked by the kind's params model in the handler (a 422 naming params.<field>).
    params: dict[str, Any] = Field(default_factory=dict)


#: What a job or promise id looks like (a job's is hex, a promise's may be chosen by the client).
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
#: A client-chosen promise id.
PromiseId = Annotated[StrictStr, Field(pattern=ID_PATTERN)]


class PromiseIn(BaseModel):
    """A promise of one of the types GET /v1/kinds lists."""

    model_config = ConfigDict(json_schema_extra=_promise_variants)

    user_id: UserIdIn
    type: StrictStr
    description: StrictStr = Field(default="", max_length=2000)
    params: dict[str, Any] = Field(default_factory=dict)
    parents: list[PromiseId] = Field(default_factory=list, max_length=100,
                                     description="Ids of existing promises of the caller.")
    id: PromiseId | None = None


class PromiseBatchIn(BaseModel):
    promises: list[PromiseIn] = Field(min_length=1, max_length=500)


class KindOut(BaseModel):
    name: str
    description: str
    #: JSON Schema of the kind's ``params``.
    params: dict[str, Any]


class JobKindOut(KindOut):
    queue: str


class KindsOut(BaseModel):
    jobs: list[JobKindOut]
    promises: list[KindOut]


class Health(BaseModel):
    status: str = Field(description="ok, or degraded (then the answer is a 503)")
    redis: bool
    workers: list[str]
    redis_error: str | None = None


class Error(BaseModel):
    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class FieldErrors(BaseModel):
    """FastAPI's 422 body: each bad field, where it is and why."""

    detail: list[FieldError]
