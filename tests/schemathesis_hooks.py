"""schemathesis hooks of tests/test_api_contract.py (``SCHEMATHESIS_HOOKS``).

A user id is an int >= 0 or a string, and ``1.0`` is neither: it is refused with a 422
(``routing.userid``), as ``true`` is. JSON Schema cannot say so (its "integer" counts 1.0 as 1),
so a positive request's float user ids are written as the ints the document means.

Two rules of a promise request are about other promises, which no JSON Schema can state: a
parent must be an existing promise of the caller, and the ids of one batch must differ (either
refused with a 422 naming the field, tests/test_api.py). A positive (schema-valid) request is
made to respect them, so that the check "a schema-valid request is accepted" stays on for
every other field of these operations; negative requests are left as generated.
"""

from __future__ import annotations

from typing import Any

import schemathesis


def _int_user(body: Any) -> None:
    if isinstance(body, dict) and isinstance(body.get("user_id"), float):
        body["user_id"] = int(body["user_id"])


def _without_references(promise: Any, seen: set[str]) -> None:
    if not isinstance(promise, dict):
        return
    _int_user(promise)
    promise["parents"] = []
    if promise.get("id") in seen:
        promise.pop("id")
    elif isinstance(promise.get("id"), str):
        seen.add(promise["id"])


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    meta = case.meta
    if (meta is None or meta.generation.mode != schemathesis.GenerationMode.POSITIVE
            or not isinstance(case.body, dict)):
        return case
    if case.operation.path == "/v1/messages":
        _int_user(case.body)
    elif case.operation.path == "/v1/promises":
        _without_references(case.body, set())
    elif case.operation.path == "/v1/promises/batch":
        seen: set[str] = set()
        for promise in case.body.get("promises") or []:
            _without_references(promise, seen)
    return case
