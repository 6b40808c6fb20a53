"""The console's request-scoped dependencies: who is signed in, and what their key allows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Form, Request

from app.actors import Scope
from app.console import service
from app.console.service import SignedIn
from app.db import session_scope
from app.errors import InsufficientScope, Unauthenticated


def origin(request: Request) -> service.Origin:
    return service.Origin(
        client_address=request.client.host if request.client else None,
        request_id=getattr(request.state, "request_id", None),
    )


def signed_in(request: Request) -> SignedIn:
    with session_scope(read_only=True) as session:
        found = service.current(session, request.cookies.get(service.COOKIE), origin(request))
    if found is None:
        # A page answers this with a redirect to the sign-in form (app.console.pages).
        raise Unauthenticated("sign in to the console with an API key (the session ended)")
    return found


SignedInDep = Annotated[SignedIn, Depends(signed_in)]


def requires(scope: Scope) -> Callable[[SignedIn], SignedIn]:
    """As the API's ``requires``: the signed-in key must hold ``scope`` (admin holds all)."""

    def check(user: SignedInDep) -> SignedIn:
        if not user.actor.may(scope):
            raise InsufficientScope(
                f"this API key lacks the {scope.value!r} scope", required_scope=scope.value
            )
        return user

    return check


def checked_form(user: SignedInDep, csrf_token: Annotated[str, Form()] = "") -> SignedIn:
    """A form post of the signed-in user that carries this session's CSRF token."""
    service.check_csrf(user.csrf_token, csrf_token)
    return user


def _checked_with(scope: Scope) -> Callable[[SignedIn], SignedIn]:
    scoped = requires(scope)

    def check(user: Annotated[SignedIn, Depends(checked_form)]) -> SignedIn:
        return scoped(user)

    return check


FormDep = Annotated[SignedIn, Depends(checked_form)]
SubmitFormDep = Annotated[SignedIn, Depends(_checked_with(Scope.submit))]
SubmitDep = Annotated[SignedIn, Depends(requires(Scope.submit))]
DownloadDep = Annotated[SignedIn, Depends(requires(Scope.download))]
AuditDep = Annotated[SignedIn, Depends(requires(Scope.audit))]
