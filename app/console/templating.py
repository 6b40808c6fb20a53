"""Rendering the console's pages: one Jinja environment, autoescaping on, and the context
every page shares (who is signed in, what their key may see)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from app.actors import Scope
from app.console.service import SignedIn
from app.console.views import drift_summary

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
STATIC_DIR = HERE / "static"


def _percent(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value * 100:.{digits}f}%"


def _when(value: Any) -> str:
    return "—" if value is None else f"{value:%Y-%m-%d %H:%M:%S} UTC"


templates.env.filters["drift"] = drift_summary
templates.env.filters["percent"] = _percent
templates.env.filters["when"] = _when


def nav(user: SignedIn | None) -> list[tuple[str, str]]:
    """The pages the signed-in key may open: the audit page only with the audit scope."""
    if user is None:
        return []
    items = [("Requests", "/console/requests"), ("Models", "/console/models")]
    if user.actor.may(Scope.submit):
        items.append(("New request", "/console/requests/new"))
    if user.actor.may(Scope.audit):
        items.append(("Audit trail", "/console/audit"))
    return items


def render(
    request: Request,
    name: str,
    user: SignedIn | None,
    status_code: int = 200,
    **context: Any,
) -> Response:
    shared = {
        "user": user,
        "nav": nav(user),
        "may": (lambda scope: user is not None and user.actor.may(Scope(scope))),
        "csrf_token": user.csrf_token if user else "",
        "path": request.url.path,
    }
    return templates.TemplateResponse(request, name, {**shared, **context}, status_code=status_code)
