"""The FastAPI application: routers, error mapping, request metrics, start-up passes.

Errors: a bad field is 422 naming it, an unknown id 404, another owner's id 403, a control
request that does not apply 409, an unreachable broker 503. Served by ``python -m api``.

``/docs`` (Swagger UI) and ``/redoc`` load their scripts and styles from this process
(``fastapi_offline`` ships them), never from a CDN: the page works on a network without internet.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api import routes_messages, routes_ops, routes_work
from api.auth import parse_tokens
from api.contract import install_openapi
from api.routes_ops import API_REQUESTS
from api.state import ApiState
from jobs.errors import IdTaken, InvalidTransition, InvalidWork, NotOwner, WorkNotFound
from jobs.kinds import job_kinds
from promises.kinds import promise_kinds
from routing.errors import InvalidDispatch, InvalidUserId, PublishFailed

log = logging.getLogger("shardline.api")


def _field_error(field: str, message: str) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": ["body", *field.split(".")], "msg": message,
                                     "type": "value_error"}]}, status_code=422)


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: a 422 echoes the bad input, which may hold a lone
    surrogate ("\\ud800") that UTF-8 cannot encode (the response would fail with a 500)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False,
                          separators=(",", ":")).encode("ascii")


def _install_error_mapping(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return AsciiJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)

    @app.exception_handler(InvalidWork)
    async def invalid_work(_: Request, exc: InvalidWork) -> JSONResponse:
        return _field_error(exc.field, exc.message)

    @app.exception_handler(InvalidUserId)
    async def invalid_user(_: Request, exc: InvalidUserId) -> JSONResponse:
        return _field_error("user_id", str(exc))

    @app.exception_handler(InvalidDispatch)
    async def invalid_dispatch(_: Request, exc: InvalidDispatch) -> JSONResponse:
        return _field_error("text", str(exc))

    simple: dict[type[Exception], int] = {WorkNotFound: 404, NotOwner: 403,
                                          InvalidTransition: 409, IdTaken: 409,
                                          PublishFailed: 503}
    for error, code in simple.items():
        async def handler(_: Request, exc: Exception, code: int = code) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=code)

        app.add_exception_handler(error, handler)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code != 405:
            return await http_exception_handler(request, exc)
        # Starlette's Allow names only the first route of the path; GET and POST /v1/jobs are
        # two routes, and a client (or schemathesis) must be told both.
        allowed = sorted({method for route in app.router.routes if isinstance(route, APIRoute)
                          and route.matches(request.scope)[0] == Match.PARTIAL
                          for method in route.methods or ()})
        return JSONResponse({"detail": exc.detail}, status_code=405,
                            headers={"Allow": ", ".join(allowed)})


def create_app(settings: Any = None) -> FastAPI:
    if settings is None:
        import celeryconfig

        settings = celeryconfig.settings
    tokens = parse_tokens(settings.api_tokens)
    job_kinds(), promise_kinds()  # a bad JOB_KINDS / PROMISE_KINDS entry stops the start

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not tokens:
            log.warning("API_TOKENS is empty: no authentication, every caller is owner "
                        "'local'; serve on loopback only")
        st = ApiState.build(settings)
        app.state.shardline = st
        st.start_up()
        yield
        st.close()

    app = FastAPIOffline(title="shardline", version="0.1.0", lifespan=lifespan,
                         description="Ordered per-user AI chat, jobs and promises over HTTP.")
    app.state.tokens = tokens
    app.include_router(routes_messages.router)
    app.include_router(routes_work.jobs)
    app.include_router(routes_work.promises)
    app.include_router(routes_work.kinds)
    app.include_router(routes_ops.router)
    install_openapi(app, tokens=bool(tokens))
    _install_error_mapping(app)

    @app.middleware("http")
    async def count_requests(request: Request,
                             call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        API_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        return response

    return app


app = create_app()
