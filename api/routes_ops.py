"""GET /healthz (Redis reachable, workers seen) and GET /metrics (Prometheus text format).

/metrics is this process's own request counter plus the deployment-wide metrics every
exporter serves (``metrics.collector``, read from Redis at scrape time).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from api.state import State
from metrics.collector import registry_for

router = APIRouter(tags=["operations"])

#: Every request the API answered, by method, route template and status code.
API_REQUESTS = Counter("shardline_api_requests_total", "HTTP requests answered by the API",
                       ["method", "route", "status"])


@router.get("/healthz")
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


@router.get("/metrics")
def metrics(st: State) -> Response:
    own = generate_latest()
    deployment = generate_latest(registry_for(st.redis, st.settings))
    return Response(own + deployment, media_type=CONTENT_TYPE_LATEST)
