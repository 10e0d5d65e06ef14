"""GET /healthz (Redis reachable, workers seen) and GET /metrics (Prometheus text format).

/metrics serves only this process's own families (its request counter, process and Python
runtime figures). The deployment-wide families are the exporter's (``python -m metrics``):
served here too, a Prometheus scraping both would add every sum twice.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from api.schemas import Health
from api.state import State

router = APIRouter(tags=["operations"])

#: Every request the API answered, by method, route template and status code.
API_REQUESTS = Counter("shardline_api_requests_total", "HTTP requests answered by the API",
                       ["method", "route", "status"])


@router.get("/healthz", responses={200: {"model": Health}, 503: {
    "model": Health, "description": "Redis unreachable or no worker answered a ping."}})
def healthz(st: State) -> JSONResponse:
    """200 when Redis answers and at least one worker replied to a ping; 503 otherwise."""
    report: dict[str, Any] = {"redis": False, "workers": []}
    try:
        report["redis"] = bool(st.redis.ping())
    except Exception as exc:  # any failure is "unreachable" for a health check
        report["redis_error"] = f"{type(exc).__name__}: {exc}"
    if report["redis"]:
        replies = st.producer.control.ping(timeout=0.5) or []
        report["workers"] = sorted(name for reply in replies for name in reply)
    healthy = report["redis"] and bool(report["workers"])
    report["status"] = "ok" if healthy else "degraded"
    return JSONResponse(report, status_code=200 if healthy else 503)


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"description": "Prometheus text format."}})
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
