"""Queries on datasets: what they find or write, no HTTP, no audit."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import find_named
from app.orm import Dataset


def find_dataset(session: Session, org_id: str, ref: str) -> Dataset | None:
    """The organisation's dataset by id, else by name (an id always wins, so a name cannot
    shadow another dataset). Another organisation's dataset is not found."""
    return find_named(session, Dataset, org_id, ref)


def name_exists(session: Session, org_id: str, name: str) -> bool:
    query = select(func.count()).where(Dataset.org_id == org_id, Dataset.name == name)
    return session.scalar(query) != 0


def insert_dataset(session: Session, dataset: Dataset) -> None:
    """Insert now (``IntegrityError`` when a concurrent registration took the name)."""
    session.add(dataset)
    session.flush()


def list_datasets(session: Session, org_id: str) -> list[Dataset]:
    query = select(Dataset).where(Dataset.org_id == org_id)
    return list(session.scalars(query.order_by(Dataset.created_at, Dataset.id)))


def location_used(session: Session, location: str) -> bool:
    """Whether any dataset, of any organisation, is stored at ``location``."""
    return (
        session.scalar(select(Dataset.id).where(Dataset.location == location).limit(1)) is not None
    )
