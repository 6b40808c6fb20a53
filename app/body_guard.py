"""Authenticate before a request body is read, and cap the body while it streams.

FastAPI reads (and spools) a request's whole body before any dependency runs, the API-key check
included: without this guard an anonymous client could make the API spool a multi-gigabyte
upload or hold a huge JSON document in memory before hearing 401, and a size limit checked in
the endpoint comes after the bytes already arrived. Every route that takes a body needs a key
(the web console's forms: a console session), so this ASGI middleware checks it first, refuses
a declared ``Content-Length`` over the limit at once, and cuts the stream off (413) at the first
byte past it.
"""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth import service as auth
from app.config import get_settings
from app.console import service as console
from app.db import session_scope
from app.errors import (
    InvalidApiKey,
    PayloadTooLarge,
    ServiceError,
    Unauthenticated,
    database_unavailable,
    problem_response,
)

# The database cannot be reached to check the key: answered as the app answers it (503).
UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)

# Methods whose requests may carry a body; every route using them needs an API key.
GUARDED = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CONSOLE_SIGN_IN = "/console/sign-in"
SIGN_IN_BODY_BYTES = 16 * 1024
# Multipart framing around an uploaded file (boundaries, part headers, small form fields).
MULTIPART_SLACK = 64 * 1024


class BodyGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in GUARDED:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            refused = await _refusal(request)
        except UNAVAILABLE as exc:  # the key cannot be checked: answer as the app would
            response = await database_unavailable(request, exc)
            await response(scope, receive, send)
            return
        if refused is not None:
            await _answer(request, refused, scope, receive, send)
            return
        limit = body_limit(request.headers.get("content-type", ""), request.url.path)
        state = {"received": 0, "cut": False, "started": False}

        async def capped_receive() -> Message:
            if state["cut"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["cut"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if state["cut"]:
                return  # whatever the app answers to a body cut short is not the answer
            state["started"] = True
            await send(message)

        try:
            await self.app(scope, capped_receive, guarded_send)
        except Exception:
            if not state["cut"]:
                raise
        if state["cut"] and not state["started"]:
            await _answer(request, _too_large(limit), scope, receive, send)


def body_limit(content_type: str, path: str = "") -> int:
    """Uploads may be as large as the upload limit allows; every other body is small, and the
    console's sign-in form (the one body anyone may send) smaller still."""
    if path == CONSOLE_SIGN_IN:
        return SIGN_IN_BODY_BYTES
    settings = get_settings()
    if path.startswith("/console/"):  # forms only: the console uploads nothing
        return settings.max_body_bytes
    if content_type.lower().startswith("multipart/"):
        return settings.max_upload_bytes + MULTIPART_SLACK
    return settings.max_body_bytes


async def _refusal(request: Request) -> ServiceError | None:
    declared = request.headers.get("content-length")
    limit = body_limit(request.headers.get("content-type", ""), request.url.path)
    if request.url.path.startswith("/console/"):
        refused = await to_thread.run_sync(_console_refusal, request)
        if refused is not None:
            return refused
    else:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Unauthenticated("send an API key as `Authorization: Bearer nep_...`")
        if not await to_thread.run_sync(_known_key, token.strip()):
            return InvalidApiKey("the API key is unknown, malformed or revoked")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return _too_large(limit)
    return None


def _known_key(token: str) -> bool:
    with session_scope(read_only=True) as session:
        return auth.authenticate(session, token) is not None


def _console_refusal(request: Request) -> ServiceError | None:
    """Console forms are signed in by their session cookie instead of a key; the sign-in form
    itself is the one body taken from anyone."""
    if request.url.path == CONSOLE_SIGN_IN:
        return None
    token = request.cookies.get(console.COOKIE)
    with session_scope(read_only=True) as session:
        if console.current(session, token, console.Origin(None, None)) is None:
            return Unauthenticated("sign in to the console with an API key (the session ended)")
    return None


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body exceeds {limit} bytes", limit_bytes=limit)


async def _answer(
    request: Request, error: ServiceError, scope: Scope, receive: Receive, send: Send
) -> None:
    response = problem_response(
        request, error.status, error.code, error.title, error.detail, **_extra(error)
    )
    response.headers.update(error.headers)
    # The client may still be sending: the connection closes after this answer.
    response.headers["Connection"] = "close"
    await response(scope, receive, send)


def _extra(error: ServiceError) -> dict[str, Any]:
    return dict(getattr(error, "extra", {}))
