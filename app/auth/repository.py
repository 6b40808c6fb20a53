"""Queries on organisations and their API keys: what they find or write, no HTTP, no audit."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.orm import ApiKey, Organization


def org_name_exists(session: Session, name: str) -> bool:
    return session.scalar(select(Organization.id).where(Organization.name == name)) is not None


def insert_org(session: Session, org: Organization) -> None:
    """Insert now, in a savepoint (``IntegrityError`` when a concurrent insert took the name;
    the transaction stays usable)."""
    session.add(org)
    with session.begin_nested():
        session.flush()


def get_org(session: Session, org_id: str) -> Organization | None:
    return session.get(Organization, org_id)


def find_org(session: Session, ref: str) -> Organization | None:
    """The organisation by id, else by name."""
    return (
        session.get(Organization, ref)
        or session.scalars(select(Organization).where(Organization.name == ref)).first()
    )


def insert_key(session: Session, key: ApiKey) -> None:
    """Insert now (its server-set columns, such as ``created_at``, are then readable)."""
    session.add(key)
    session.flush()


def get_key(session: Session, key_id: str) -> ApiKey | None:
    """The key by id, whatever its organisation or state."""
    return session.get(ApiKey, key_id)


def list_keys(session: Session, org_id: str) -> list[ApiKey]:
    query = select(ApiKey).where(ApiKey.org_id == org_id).order_by(ApiKey.created_at, ApiKey.id)
    return list(session.scalars(query))
