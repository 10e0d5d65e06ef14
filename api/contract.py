"""What the OpenAPI document promises beyond the handlers' signatures: error answers and auth.

Each route declares the error statuses it can answer (:func:`errors`), with their bodies. The
bearer scheme is declared only when ``API_TOKENS`` is set: without tokens the API has no
authentication, and a document that asked for a token (or promised a 401) would be false.
schemathesis checks the document against the running API in both modes
(tests/test_api_contract.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.schemas import Error, FieldErrors

#: Why each error status is answered.
WHY: dict[int, str] = {
    400: "The body cannot be parsed (not JSON, or not UTF-8).",
    401: "Missing or invalid credentials.",
    403: "The job or promise belongs to another owner (or the webhook is disabled).",
    404: "No job or promise with this id.",
    409: "The control request does not apply in the current status, or the id is taken.",
    422: "A field is missing or invalid (detail names it).",
    503: "The broker (Redis) cannot be reached; nothing was queued.",
}

#: The name of the bearer scheme (``fastapi.security.HTTPBearer``'s default).
BEARER = "HTTPBearer"


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route that can answer ``codes`` (422 FastAPI declares itself)."""
    return {code: {"model": FieldErrors if code == 422 else Error, "description": WHY[code]}
            for code in codes}


def links(*operations: str, parameter: str) -> dict[int | str, dict[str, Any]]:
    """The created resource's ``id`` feeds ``parameter`` of each of ``operations`` (OpenAPI
    links: a client, and schemathesis's stateful phase, can follow them)."""
    return {202: {"links": {operation: {"operationId": operation,
                                        "parameters": {parameter: "$response.body#/id"}}
                            for operation in operations}}}


def install_openapi(app: FastAPI, *, tokens: bool) -> None:
    """Build the document once, without the bearer scheme (and its 401s) if not ``tokens``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version,
                              description=app.description, routes=app.routes)
            if not tokens:
                _without_bearer(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _without_bearer(doc: dict[str, Any]) -> None:
    schemes = doc.get("components", {}).get("securitySchemes", {})
    schemes.pop(BEARER, None)
    if not schemes:
        doc.get("components", {}).pop("securitySchemes", None)
    for methods in doc["paths"].values():
        for operation in methods.values():
            security = operation.get("security", [])
            if any(BEARER in requirement for requirement in security):
                operation["security"] = [r for r in security if BEARER not in r]
                if not operation["security"]:
                    del operation["security"]
                operation.get("responses", {}).pop("401", None)
