"""The FastAPI application."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute

from app.audit.router import router as audit_router
from app.auth.router import router as auth_router
from app.body_guard import BodyGuard
from app.config import get_settings
from app.console import pages as console
from app.datasets.router import router as datasets_router
from app.deletions.router import router as deletions_router
from app.errors import install_handlers, problem_response
from app.jobs.router import router as jobs_router
from app.models.router import router as models_router
from app.observability import bind_log_ids, configure_logging, reset_log_ids
from app.observability.router import install as install_observability
from app.webhooks.router import router as webhooks_router


def _operation_id(route: APIRoute) -> str:
    tag = route.tags[0] if route.tags else "default"
    return f"{tag}-{route.name}"


def create_app() -> FastAPI:
    settings = get_settings()
    configure_logging(settings)
    settings.check_production()
    app = FastAPI(
        title="Nepenthe",
        version="0.1.0",
        description="Machine unlearning as a service: deletion requests, jobs, checkpoints, audit.",
        generate_unique_id_function=_operation_id,
    )
    install_handlers(app)
    # Added first, so it runs inside the middleware below: the request id is set when it answers.
    app.add_middleware(BodyGuard)

    @app.middleware("http")
    async def refuse_nul_characters(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # PostgreSQL text cannot hold NUL; refuse it in the path and query up front.
        if "\x00" in request.url.path or b"%00" in request.scope["query_string"].lower():
            return problem_response(
                request,
                400,
                "invalid_characters",
                "Invalid characters",
                "the path or query contains a NUL character",
            )
        return await call_next(request)

    console.install(app)  # inside the request id: its error pages name the request

    @app.middleware("http")
    async def request_id(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = rid[:64]
        # Every log record made while serving this request carries its id. Not reset when the
        # app raises: the handler of unexpected errors runs outside this middleware (in the
        # same task) and logs the failure with it; the request's task ends with it anyway.
        ids = bind_log_ids(request_id=request.state.request_id)
        response = await call_next(request)
        reset_log_ids(ids)
        response.headers["X-Request-ID"] = request.state.request_id
        return response

    routers = (
        auth_router,
        models_router,
        datasets_router,
        deletions_router,
        jobs_router,
        audit_router,
        webhooks_router,
    )
    for router in routers:
        app.include_router(router)
    install_observability(app, settings)  # last: its middleware wraps the others
    return app


app = create_app()
