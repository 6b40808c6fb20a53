"""Probes and the scrape endpoint; none takes an API key (the platform calls them, not clients).

They stay out of the OpenAPI document: they are the deployment's interface, not the API's.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.config import Settings, get_settings
from app.db import get_engine
from app.errors import problem_response
from app.observability.health import FAILED, readiness
from app.observability.metrics import HttpMetricsMiddleware, Metrics

health_router = APIRouter(tags=["health"])
metrics_router = APIRouter(tags=["health"])


@health_router.get("/healthz", summary="Liveness and database check")
def healthz() -> dict[str, str]:
    """Answers when the process is up and the database reachable."""
    with get_engine(read_only=True).connect() as conn:
        conn.execute(text("SELECT 1"))
    return {"status": "ok"}


@health_router.get("/livez", include_in_schema=False)
def livez() -> dict[str, str]:
    """The process answers; touches nothing, so a slow database never gets it restarted."""
    return {"status": "alive"}


@health_router.get("/readyz", include_in_schema=False, response_model=None)
def readyz(request: Request) -> dict[str, object] | JSONResponse:
    """Whether to send traffic here: the database is reachable. A broker that is down only
    degrades the service (requests are still accepted and kept; the workers' sweeper sends them
    once it is back), so it is reported but does not take the API out of rotation."""
    checks = readiness(get_settings())
    if checks["database"] == FAILED:
        detail = "the database is unreachable or failing"
        return problem_response(request, 503, "not_ready", "Not ready", detail, checks=checks)
    degraded = any(outcome == FAILED for outcome in checks.values())
    return {"status": "degraded" if degraded else "ready", "checks": checks}


@metrics_router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus text format: this process's HTTP figures, the deployment's job figures."""
    figures: Metrics = request.app.state.metrics
    body, content_type = figures.render()
    return Response(body, media_type=content_type)


def install(app: FastAPI, settings: Settings) -> None:
    """The probes, and (``metrics_enabled``) the HTTP metrics middleware and GET /metrics."""
    app.include_router(health_router)
    if not settings.metrics_enabled:
        return
    app.state.metrics = Metrics()
    # Added last, so it is the outermost middleware and counts the answers of the others too.
    app.add_middleware(HttpMetricsMiddleware, metrics=app.state.metrics)
    app.include_router(metrics_router)
