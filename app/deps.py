"""Request-scoped dependencies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.actors import Actor, Scope
from app.auth import service as auth
from app.db import connection_capacity, get_sessionmaker, session_scope
from app.errors import InsufficientScope, InvalidApiKey, Unauthenticated


async def get_session() -> AsyncIterator[Session]:
    """The unit of work of one request: commit when the route returns, roll back on error."""
    async with _unit_of_work(read_only=False) as session:
        yield session


async def get_read_session() -> AsyncIterator[Session]:
    """A session for routes that only read (on SQLite it takes no write lock; on PostgreSQL
    it reads in autocommit)."""
    async with _unit_of_work(read_only=True) as session:
        yield session


_SLOTS: RunVar[anyio.Semaphore] = RunVar("nepenthe_database_slots")


def _slots() -> anyio.Semaphore:
    """Requests that may hold a pooled connection at once: one fewer than the pool holds.

    A route's session keeps its connection until its exit, after the response model is
    validated in another thread. Were more requests let in than the pool has connections, every
    thread of the pool could wait for a connection while the connections wait for a thread (it
    stalled the API under 64 concurrent polls). With one connection always left over, the
    short units that open and close in one thread (the key check, a nested read) go on, and
    so does everything behind them. The rest wait here, in the event loop, holding nothing."""
    try:
        return _SLOTS.get()
    except LookupError:
        slots = anyio.Semaphore(max(1, connection_capacity() - 1))
        _SLOTS.set(slots)
        return slots


@asynccontextmanager
async def _unit_of_work(read_only: bool) -> AsyncIterator[Session]:
    async with _slots():
        session = get_sessionmaker(read_only)()  # no I/O until the route's first statement
        try:
            yield session
        except BaseException:
            await _end(session, commit=False)
            raise
        await _end(session, commit=True)


async def _end(session: Session, commit: bool) -> None:
    # Shielded, so a client that goes away never leaves a connection checked out; on a limiter
    # of its own, so ending never waits for a thread of the pool that routes run in.
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(_close, session, commit, limiter=anyio.CapacityLimiter(1))


def _close(session: Session, commit: bool) -> None:
    try:
        if commit:
            session.commit()
    finally:
        session.close()  # rolls back whatever was not committed


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
