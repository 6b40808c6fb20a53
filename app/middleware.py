"""The request id and the NUL check, as plain ASGI middleware.

Starlette's ``BaseHTTPMiddleware`` (what ``@app.middleware("http")`` makes) runs every request
through a task group and memory streams; on a status poll that was a measurable part of the API's
CPU per request (bench/capacity.py). These two need none of it: they look at the scope and
either answer at once or pass the call through, stamping a header on the way out.
"""

from __future__ import annotations

import uuid

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import problem_response
from app.observability import bind_log_ids

REQUEST_ID_MAX = 64


class RequestId:
    """Names each request (the client's ``X-Request-ID``, else a new one) in ``request.state``,
    in every log record made while serving it, and in the answer's ``X-Request-ID``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _client_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        # Not reset afterwards: the handler of unexpected errors runs outside this middleware
        # (in the same task) and logs the failure with the id; the request's task ends anyway.
        bind_log_ids(request_id=rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        await self.app(scope, receive, send_with_id)


def _client_request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return value.decode("latin-1")[:REQUEST_ID_MAX]
    return ""


class RefuseNulCharacters:
    """PostgreSQL text cannot hold NUL: refuse it in the path and query up front (400)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope["path"] or b"%00" in scope["query_string"].lower()
        ):
            response = problem_response(
                Request(scope),
                400,
                "invalid_characters",
                "Invalid characters",
                "the path or query contains a NUL character",
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
