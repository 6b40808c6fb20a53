"""The console's routes: sign-in and sign-out here, the pages in their own modules."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from app.config import Environment, get_settings
from app.console import audit_pages, models_pages, requests_pages, service
from app.console.deps import FormDep, SignedInDep, origin, signed_in
from app.console.templating import render
from app.db import session_scope
from app.deps import SessionDep
from app.errors import CsrfTokenInvalid, InvalidApiKey, ServiceError, Unauthenticated
from app.keys import get_signer
from app.signing import ALGORITHM, public_pem

router = APIRouter(prefix="/console", include_in_schema=False)
router.include_router(requests_pages.router)
router.include_router(models_pages.router)
router.include_router(audit_pages.router)


@router.get("")
@router.get("/")
def home() -> Response:
    return RedirectResponse("/console/requests", status_code=303)


def _secure() -> bool:
    # Browsers keep a Secure cookie only over HTTPS (localhost excepted); the development
    # default serves plain HTTP on 127.0.0.1.
    return get_settings().env is not Environment.development


def _safe_next(target: str | None) -> str:
    """Only a console page of this server: never another site (an open redirect)."""
    if target and target.startswith("/console/") and not target.startswith("//"):
        if "\\" not in target and "://" not in target:
            return target
    return "/console/requests"


def _sign_in_form(
    request: Request,
    next_page: str | None,
    status_code: int = 200,
    problem: ServiceError | None = None,
    notice: str | None = None,
) -> Response:
    token = request.cookies.get(service.LOGIN_COOKIE) or secrets.token_urlsafe(32)
    response = render(
        request,
        "sign_in.html",
        None,
        status_code=status_code,
        login_token=token,
        next_page=_safe_next(next_page),
        problem=problem,
        notice=notice,
    )
    response.set_cookie(
        service.LOGIN_COOKIE,
        token,
        max_age=3600,
        path="/console/sign-in",
        httponly=True,
        secure=_secure(),
        samesite="strict",
    )
    return response


@router.get("/sign-in")
def sign_in_page(request: Request, next: str | None = None, signed_out: bool = False) -> Response:
    try:
        signed_in(request)
    except Unauthenticated:
        notice = "You are signed out." if signed_out else None
        return _sign_in_form(request, next, notice=notice)
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/sign-in")
def sign_in(
    request: Request,
    session: SessionDep,
    api_key: Annotated[str, Form(max_length=200)] = "",
    csrf_token: Annotated[str, Form(max_length=100)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Exchange an API key for a session cookie; the key is not kept in the browser."""
    expected = request.cookies.get(service.LOGIN_COOKIE) or ""
    try:
        # An hour-old form, or one posted from elsewhere: shown again with a fresh token.
        service.check_csrf(expected, csrf_token)
        token, _ = service.sign_in(session, api_key, origin(request))
    except (CsrfTokenInvalid, InvalidApiKey) as refused:
        return _sign_in_form(request, next, status_code=refused.status, problem=refused)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        service.COOKIE,
        token,
        max_age=int(get_settings().console_session_hours * 3600),
        path="/console",
        httponly=True,
        secure=_secure(),
        samesite="strict",
    )
    response.delete_cookie(service.LOGIN_COOKIE, path="/console/sign-in")
    return response


@router.get("/api/signing-key")
def signing_key(_: SignedInDep) -> dict[str, str]:
    """The published key, as GET /v1/signing-key, for the evidence page's verifier."""
    signer = get_signer()
    return {
        "algorithm": ALGORITHM,
        "key_id": signer.key_id,
        "public_key_pem": public_pem(signer.public_key),
    }


@router.post("/sign-out")
def sign_out(user: FormDep) -> Response:
    with session_scope() as session:
        service.sign_out(session, user)
    response = RedirectResponse("/console/sign-in?signed_out=1", status_code=303)
    response.delete_cookie(service.COOKIE, path="/console")
    return response
