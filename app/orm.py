"""Every table, in one place (Alembic imports this module's metadata)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.expression import false
from sqlalchemy.types import TypeDecorator

from app.db import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    # The method ran, but the result missed the request's acceptance thresholds: no version.
    rejected = "rejected"
    failed = "failed"
    canceled = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self is not JobStatus.queued and self is not JobStatus.running


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every database.

    PostgreSQL keeps the offset; SQLite keeps naive text, so values are converted to UTC before
    they are stored or compared and read back as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self,
        value: datetime | None,
        dialect: Dialect,  # noqa: ARG002 - the signature TypeDecorator calls
    ) -> datetime | None:
        if value is None:
            return None
        # PostgreSQL answers in the session's time zone; SQLite gives naive UTC text.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Timestamp = UtcDateTime()
Id = String(36)


class Model(Base):
    __tablename__ = "model"

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    task: Mapped[str] = mapped_column(String(32))
    architecture: Mapped[str] = mapped_column(String(100))
    architecture_args: Mapped[dict[str, Any]] = mapped_column(JSON)
    input_shape: Mapped[list[int]] = mapped_column(JSON)
    normalization: Mapped[dict[str, list[float]]] = mapped_column(JSON)
    # Classifiers: their classes. Image-to-image models: empty (requests name dataset classes).
    class_names: Mapped[list[str]] = mapped_column(JSON)
    # Image-to-image models only: parameter-name prefixes of the part unlearning may train, and
    # the completion task ({"kind", "size", "cell"}) their evaluation masks follow.
    encoder: Mapped[list[str] | None] = mapped_column(JSON)
    transform: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("model_id", "number"),)

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("model.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(200))
    source_format: Mapped[str] = mapped_column(String(32))
    parent_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_version.id"))
    # The FK closes a cycle (a request names a version; a version names its request), so it is
    # added after both tables exist.
    produced_by_request_id: Mapped[str | None] = mapped_column(
        ForeignKey("deletion_request.id", use_alter=True)
    )
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class Dataset(Base):
    __tablename__ = "dataset"

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    location: Mapped[str | None] = mapped_column(Text)
    class_names: Mapped[list[str]] = mapped_column(JSON)
    image_shape: Mapped[list[int] | None] = mapped_column(JSON)
    train_count: Mapped[int] = mapped_column(Integer)
    test_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class DeletionRequest(Base):
    __tablename__ = "deletion_request"

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    model_version_id: Mapped[str] = mapped_column(ForeignKey("model_version.id"), index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("dataset.id"))
    # A proxy retain set (image-to-image requests): other data the owner may keep, used instead
    # of the training data outside the forget set.
    retain_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("dataset.id"))
    forget_classes: Mapped[list[int] | None] = mapped_column(JSON)
    forget_samples: Mapped[list[str] | None] = mapped_column(JSON)
    method: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Resolved acceptance thresholds (defaults filled in), so the decision can be re-checked.
    acceptance: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # {"method": "retrain", "params": {...}} when the request asked for a retrained reference.
    reference: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    measure_relearn_time: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    caller_reference: Mapped[str | None] = mapped_column(String(200), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    body_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class Job(Base):
    __tablename__ = "job"

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    request_id: Mapped[str] = mapped_column(ForeignKey("deletion_request.id"), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued, index=True)
    phase: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    output_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_version.id"))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(Timestamp)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class JobArtifact(Base):
    """A file a job produced besides its checkpoint (the before/after completion grid)."""

    __tablename__ = "job_artifact"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    media_type: Mapped[str] = mapped_column(String(100))
    storage_key: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class JobEvent(Base):
    """The history of a job's status: one row per accepted transition."""

    __tablename__ = "job_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class AuditEvent(Base):
    """Append-only record of everything done: requests, job state changes, downloads."""

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_event_at_id", "at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    action: Mapped[str] = mapped_column(String(64), index=True)
    model_id: Mapped[str | None] = mapped_column(Id, index=True)
    model_version_id: Mapped[str | None] = mapped_column(Id)
    dataset_id: Mapped[str | None] = mapped_column(Id)
    request_id: Mapped[str | None] = mapped_column(Id, index=True)
    job_id: Mapped[str | None] = mapped_column(Id)
    caller_reference: Mapped[str | None] = mapped_column(String(200), index=True)
    client_address: Mapped[str | None] = mapped_column(String(100))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
