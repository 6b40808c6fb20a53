"""Queries on models and their versions: what they find or write, no HTTP, no audit."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from app.db import find_named
from app.orm import Model, ModelVersion, Organization


def find_model(session: Session, org_id: str, ref: str) -> Model | None:
    """The organisation's model by id, else by name (an id always wins, so a name cannot shadow
    another model). Another organisation's model is not found."""
    return find_named(session, Model, org_id, ref)


def name_exists(session: Session, org_id: str, name: str) -> bool:
    query = select(func.count()).where(Model.org_id == org_id, Model.name == name)
    return session.scalar(query) != 0


def list_models(session: Session, org_id: str) -> list[Model]:
    query = select(Model).where(Model.org_id == org_id).order_by(Model.created_at, Model.id)
    return list(session.scalars(query))


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


def versions_with_content(
    session: Session, org_id: str, digests: Collection[str]
) -> list[ModelVersion]:
    """The organisation's versions, of any of its models, whose stored or uploaded file has one
    of the SHA-256 ``digests``, oldest first."""
    if not digests:
        return []
    wanted = sorted(set(digests))
    return list(
        session.scalars(
            select(ModelVersion)
            .join(Model, Model.id == ModelVersion.model_id)
            .where(
                Model.org_id == org_id,
                or_(ModelVersion.sha256.in_(wanted), ModelVersion.uploaded_sha256.in_(wanted)),
            )
            .order_by(ModelVersion.created_at, ModelVersion.id)
        )
    )


def lock_model(session: Session, model_id: str) -> Model | None:
    """The model, its row locked until the transaction ends (FOR NO KEY UPDATE: see
    ``app.audit.chain``)."""
    return session.get(Model, model_id, with_for_update={"key_share": True})


def lock_organization(session: Session, org_id: str) -> None:
    """Lock the organisation's row until the transaction ends. Uploads and finishing jobs take
    it after their model's lock, so they decide on content one at a time: weights superseded
    right now under one model are either seen by an upload of the same weights under another,
    or see it. FOR NO KEY UPDATE: rows that only refer to the organisation (audit events) are
    still written meanwhile."""
    session.execute(
        select(Organization.id).where(Organization.id == org_id).with_for_update(key_share=True)
    )


def insert_model(session: Session, model: Model) -> None:
    """Insert now (``IntegrityError`` when a concurrent registration took the name)."""
    session.add(model)
    session.flush()


def insert_version(session: Session, version: ModelVersion) -> None:
    """Insert in a savepoint (``IntegrityError`` when a concurrent insert took the number; the
    transaction stays usable)."""
    with session.begin_nested():
        session.add(version)


def get_model(session: Session, model_id: str) -> Model | None:
    """The model by id, whatever its organisation."""
    return session.get(Model, model_id)
