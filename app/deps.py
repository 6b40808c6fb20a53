"""Request-scoped dependencies."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.actors import Actor, Scope
from app.auth import service as auth
from app.db import session_scope
from app.errors import InsufficientScope, InvalidApiKey, Unauthenticated


def get_session() -> Iterator[Session]:
    """The unit of work of one request: commit when the route returns, roll back on error."""
    with session_scope() as session:
        yield session


def get_read_session() -> Iterator[Session]:
    """A session for routes that only read (on SQLite it takes no write lock)."""
    with session_scope(read_only=True) as session:
        yield session


# scope="function": commit before the response is sent, so a client that polls right after a
# 202 always finds the rows it was told about.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]


_bearer = HTTPBearer(auto_error=False, description="an API key: `Bearer nep_<id>_<secret>`")


def current_actor(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Actor:
    """The organisation and scopes of the API key in the Authorization header."""
    if credentials is None:
        raise Unauthenticated("send an API key as `Authorization: Bearer nep_...`")
    with session_scope(read_only=True) as session:
        key = auth.authenticate(session, credentials.credentials)
    if key is None:
        raise InvalidApiKey("the API key is unknown, malformed or revoked")
    return Actor(
        org_id=key.org_id,
        name=f"key:{key.id}",
        scopes=frozenset(Scope(s) for s in key.scopes),
        client_address=request.client.host if request.client else None,
        http_request_id=getattr(request.state, "request_id", None),
    )


ActorDep = Annotated[Actor, Depends(current_actor)]


def requires(scope: Scope) -> Callable[[Actor], Actor]:
    """A dependency: the caller's actor, once its key is known to hold ``scope``."""

    def check(actor: ActorDep) -> Actor:
        if not actor.may(scope):
            raise InsufficientScope(
                f"this API key lacks the {scope.value!r} scope", required_scope=scope.value
            )
        return actor

    return check


RegisterDep = Annotated[Actor, Depends(requires(Scope.register))]
SubmitDep = Annotated[Actor, Depends(requires(Scope.submit))]
DownloadDep = Annotated[Actor, Depends(requires(Scope.download))]
AuditDep = Annotated[Actor, Depends(requires(Scope.audit))]
AdminDep = Annotated[Actor, Depends(requires(Scope.admin))]
