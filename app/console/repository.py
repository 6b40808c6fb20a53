from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, or_
from sqlalchemy.orm import Session

from app.orm import ApiKey, ConsoleSession


def insert(session: Session, row: ConsoleSession) -> None:
    session.add(row)
    session.flush()


def get_with_key(session: Session, session_id: str) -> tuple[ConsoleSession, ApiKey] | None:
    row = session.get(ConsoleSession, session_id)
    if row is None:
        return None
    key = session.get(ApiKey, row.key_id)
    return (row, key) if key is not None else None


def purge_expired(session: Session, before: datetime) -> None:
    """Rows of sessions that expired or ended before ``before``: no cookie can use them."""
    ended = ConsoleSession.ended_at < before
    session.execute(delete(ConsoleSession).where(or_(ConsoleSession.expires_at < before, ended)))
