"""What every console page gets from the application: HTML error pages in place of problem
documents, security headers, the static files, the routes."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app.console.deps import signed_in
from app.console.router import router
from app.console.service import COOKIE, SignedIn
from app.console.templating import STATIC_DIR, render
from app.errors import PROBLEM_JSON, Unauthenticated

log = logging.getLogger(__name__)
PREFIX = "/console"
API_PREFIX = "/console/api/"  # what the pages' scripts fetch: problems stay JSON there
# Everything from this server, nothing inline: a page cannot be framed, nor run a script or
# send a form anywhere else.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# What a person can do about each kind of problem.
ADVICE = {
    400: "The page sent something the server could not read. Go back and try again.",
    401: "Your session has ended or the key is not valid. Sign in again.",
    403: "The API key you signed in with does not allow this. Ask an administrator for a key "
    "with the scope it needs.",
    404: "Nothing by that name exists in your organisation (or it belongs to another one).",
    405: "This address does not take that kind of request.",
    409: "The request conflicts with the current state of the resource; reload to see it.",
    410: "This version still holds data a deletion removed: it is no longer served.",
    413: "What was sent is larger than this server accepts.",
    422: "The server understood the request but cannot use it; the detail says why.",
    429: "Your organisation has reached a limit for now; try again later.",
    503: "A service the server depends on is unavailable; nothing was changed. Retry shortly.",
}


# Where the status alone would mislead.
ADVICE_BY_CODE = {
    "csrf_token_invalid": "The form was not accepted: it came from another site, or from a page "
    "older than your session. Reload the page and send it again.",
    "version_superseded": ADVICE[410] + " An admin may download it with a reason.",
}


def advice(status: int, code: str) -> str:
    """What a person can do about a problem."""
    if code in ADVICE_BY_CODE:
        return ADVICE_BY_CODE[code]
    if status in ADVICE:
        return ADVICE[status]
    if status >= 500:
        return "The server failed to do this; nothing was changed. Retry, or report the id below."
    return "The request was refused; the detail says why."


def error_page(
    request: Request,
    problem: dict[str, Any],
    headers: Mapping[str, str],
    user: SignedIn | None = None,
) -> Response:
    status = int(problem.get("status", 500))
    page = render(
        request,
        "error.html",
        user,
        status_code=status,
        problem=problem,
        advice=advice(status, str(problem.get("code", ""))),
    )
    for name in ("Retry-After", "WWW-Authenticate", "X-Request-ID"):
        if name in headers:  # a Starlette MutableHeaders: case-insensitive
            page.headers[name] = headers[name]
    return page


def _signed_in_or_none(request: Request) -> SignedIn | None:
    try:
        return signed_in(request)
    except Unauthenticated:
        return None


def _sign_in_again(request: Request) -> Response:
    """An ended session: a page returns to itself after signing in; a form's data cannot be
    replayed, so a form returns to the console page it was posted from."""
    if request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    else:
        referer = urlsplit(request.headers.get("referer", ""))
        same = referer.netloc == request.url.netloc and referer.path.startswith(PREFIX + "/")
        target = referer.path if same else f"{PREFIX}/requests"
    response = RedirectResponse(f"{PREFIX}/sign-in?{urlencode({'next': target})}", 303)
    if COOKIE in request.cookies:  # a stale cookie; never touched from another site's request
        response.delete_cookie(COOKIE, path=PREFIX)
    return response


async def _as_page(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    path = request.url.path
    try:
        response = await call_next(request)
    except Exception:
        # Past this middleware it would become the API's JSON 500; a page is clearer here.
        log.exception("unhandled error on %s", path)
        problem = {
            "status": 500,
            "code": "internal_error",
            "title": "Internal error",
            "detail": "an unexpected error occurred",
            "request_id": getattr(request.state, "request_id", None),
        }
        response = error_page(request, problem, {})
    is_problem = response.headers.get("content-type", "").startswith(PROBLEM_JSON)
    if is_problem and not path.startswith(API_PREFIX):
        body = b"".join([chunk async for chunk in response.body_iterator])  # type: ignore[attr-defined]
        if response.status_code == 401:
            response = _sign_in_again(request)
        else:
            # Signed in, the page keeps its navigation and its sign-out.
            user = await run_in_threadpool(_signed_in_or_none, request)
            response = error_page(request, json.loads(body), response.headers, user)
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


class ConsolePages:
    """``_as_page`` for console paths only: every other request goes straight through, without
    the cost of a ``BaseHTTPMiddleware`` layer on the API's hot paths."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.pages = BaseHTTPMiddleware(app, dispatch=_as_page)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            await self.pages(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC_DIR), name="console-static")
    app.add_middleware(ConsolePages)
