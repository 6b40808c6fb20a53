"""Queries on models and their versions."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.orm import Model, ModelVersion


def find_model(session: Session, ref: str) -> Model | None:
    """A model by id, else by name (an id always wins, so a name cannot shadow another model)."""
    by_id = session.get(Model, ref)
    return by_id or session.scalars(select(Model).where(Model.name == ref)).first()


def name_exists(session: Session, name: str) -> bool:
    return session.scalar(select(func.count()).where(Model.name == name)) != 0


def list_models(session: Session) -> list[Model]:
    return list(session.scalars(select(Model).order_by(Model.created_at, Model.id)))


def next_version_number(session: Session, model_id: str) -> int:
    current = session.scalar(
        select(func.max(ModelVersion.number)).where(ModelVersion.model_id == model_id)
    )
    return int(current or 0) + 1


def find_version(session: Session, model_id: str, number: int) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion).where(ModelVersion.model_id == model_id, ModelVersion.number == number)
    ).first()


def get_version(session: Session, version_id: str) -> ModelVersion | None:
    return session.get(ModelVersion, version_id)


def list_versions(session: Session, model_id: str) -> list[ModelVersion]:
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.model_id == model_id)
            .order_by(ModelVersion.number)
        )
    )
