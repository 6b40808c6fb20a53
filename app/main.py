"""The FastAPI application."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy import text

from app.audit.router import router as audit_router
from app.auth.router import router as auth_router
from app.config import get_settings
from app.datasets.router import router as datasets_router
from app.db import get_engine
from app.deletions.router import router as deletions_router
from app.errors import install_handlers, problem_response
from app.jobs.router import router as jobs_router
from app.models.router import router as models_router
from app.webhooks.router import router as webhooks_router


def _operation_id(route: APIRoute) -> str:
    tag = route.tags[0] if route.tags else "default"
    return f"{tag}-{route.name}"


def create_app() -> FastAPI:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    get_settings().check_production()
    app = FastAPI(
        title="Nepenthe",
        version="0.1.0",
        description="Machine unlearning as a service: deletion requests, jobs, checkpoints, audit.",
        generate_unique_id_function=_operation_id,
    )
    install_handlers(app)

    @app.middleware("http")
    async def refuse_nul_characters(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # PostgreSQL text cannot hold NUL; refuse it in the path and query up front.
        if "\x00" in request.url.path or b"%00" in request.scope["query_string"].lower():
            return problem_response(
                request, 400, "invalid_characters", "Invalid characters",
                "the path or query contains a NUL character",
            )  # fmt: skip
        return await call_next(request)

    @app.middleware("http")
    async def request_id(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = rid[:64]
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id
        return response

    @app.get("/healthz", tags=["health"], summary="Liveness and database check")
    def healthz() -> dict[str, str]:
        """Answers when the process is up and the database reachable."""
        with get_engine(read_only=True).connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok"}

    routers = (auth_router, models_router, datasets_router, deletions_router, jobs_router,
               audit_router, webhooks_router)  # fmt: skip
    for router in routers:
        app.include_router(router)
    return app


app = create_app()
