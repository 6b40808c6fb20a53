"""Request-scoped dependencies."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.db import session_scope


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


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


ClientDep = Annotated[str | None, Depends(client_address)]
