"""The FastAPI application."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.audit.router import router as audit_router
from app.auth.router import router as auth_router
from app.body_guard import BodyGuard
from app.config import get_settings
from app.console import pages as console
from app.datasets.router import router as datasets_router
from app.deletions.router import router as deletions_router
from app.errors import install_handlers
from app.jobs.router import router as jobs_router
from app.middleware import RefuseNulCharacters, RequestId
from app.models.router import router as models_router
from app.observability import configure_logging
from app.observability.router import install as install_observability
from app.webhooks.router import router as webhooks_router


def _operation_id(route: APIRoute) -> str:
    tag = route.tags[0] if route.tags else "default"
    return f"{tag}-{route.name}"


@asynccontextmanager
async def _heap_out_of_the_collectors_sight(_app: FastAPI) -> AsyncIterator[None]:
    # What start-up imported and built (torch, the ORM, the routes: about 500k objects) lives as
    # long as the process. Left to the collector, each full collection walked all of it for
    # about 280 ms on this project's 2-core machine, and every request in flight waited: the
    # p99 of a constant route was 250-370 ms at 16 connections.
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()  # an app built and dropped in one process (tests) is collected again


def create_app() -> FastAPI:
    settings = get_settings()
    configure_logging(settings)
    settings.check_production()
    app = FastAPI(
        title="Nepenthe",
        version="0.1.0",
        description="Machine unlearning as a service: deletion requests, jobs, checkpoints, audit.",
        generate_unique_id_function=_operation_id,
        lifespan=_heap_out_of_the_collectors_sight,
    )
    install_handlers(app)
    # Added first, so it runs inside the middleware below: the request id is set when it answers.
    app.add_middleware(BodyGuard)
    app.add_middleware(RefuseNulCharacters)
    console.install(app)  # inside the request id: its error pages name the request
    app.add_middleware(RequestId)

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
