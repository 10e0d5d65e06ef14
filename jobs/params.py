"""A work kind's parameters as a pydantic model: one home for what is accepted.

The same model checks a request in the worker-facing code (``validate``) and describes it in
the API's OpenAPI document, so the document rejects exactly what the code rejects.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ValidationError

from jobs.errors import InvalidWork


def _json_integer(value: Any) -> Any:
    # JSON Schema's "integer" is any number without a fraction (5 and 5.0, never true or "5").
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, got {value!r}")
    return value


#: An integer as JSON Schema means it: what the OpenAPI document promises is what is taken.
JsonInt = Annotated[int, BeforeValidator(_json_integer)]


def checked_params(model: type[BaseModel], params: Any) -> BaseModel:
    """``params`` checked by ``model``; an :class:`InvalidWork` naming the first bad field."""
    if not isinstance(params, dict):
        raise InvalidWork("params", f"must be an object, got {type(params).__name__}")
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(["params", *(str(part) for part in error["loc"])])
        raise InvalidWork(field, f"{error['msg']}, got {error.get('input')!r}") from None
