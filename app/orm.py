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
from sqlalchemy.orm import Mapped, mapped_column, query_expression
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


class Organization(Base):
    """A tenant: it sees only its own models, datasets, requests, keys and audit events."""

    __tablename__ = "organization"

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class ApiKey(Base):
    """An API key: only an HMAC of its secret is kept, so the table leaks no usable key."""

    __tablename__ = "api_key"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organization.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)


class ConsoleSession(Base):
    """A sign-in to the web console: the cookie holds a random token, this row only its
    SHA-256, so the table leaks no usable session. It acts with its key's organisation and
    scopes, read afresh on every request (a revoked key ends its sessions at once)."""

    __tablename__ = "console_session"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the token
    key_id: Mapped[str] = mapped_column(ForeignKey("api_key.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    ended_at: Mapped[datetime | None] = mapped_column(Timestamp)


class Model(Base):
    __tablename__ = "model"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organization.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
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
    # How the registered weights were trained ({"epochs", "optimizer", "lr", "batch_size",
    # "augmentation"}), when the owner said: the scale of a retrain in jobs' cost reports.
    training: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Opt-in joining of the requests waiting on one version into one job ({"max_wait_s",
    # "max_requests"}); None: every request runs as its own job as soon as a worker is free.
    coalescing: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # How far a version may move from its last fully trained ancestor ({"max_deletions",
    # "max_retain_accuracy_drop", "max_weight_distance", "retrain"}); None: no limit.
    drift_budget: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("model_id", "number"),)

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("model.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    # The stored file (canonical safetensors, unlearning.checkpoints.canonical_bytes): what
    # downloads serve and jobs read.
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # The file the client uploaded, before it was re-serialised: what the customer holds. None
    # for versions a job produced (and for uploads recorded before migration 0009).
    uploaded_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    uploaded_size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(200))
    source_format: Mapped[str] = mapped_column(String(32))
    parent_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_version.id"))
    # The FK closes a cycle (a request names a version; a version names its request), so it is
    # added after both tables exist.
    produced_by_request_id: Mapped[str | None] = mapped_column(
        ForeignKey("deletion_request.id", use_alter=True)
    )
    # Set when a deletion request succeeded on this version or an ancestor: these weights still
    # hold the data that request removed, so downloads need an admin's audited reason.
    superseded_at: Mapped[datetime | None] = mapped_column(Timestamp)
    superseded_by_request_id: Mapped[str | None] = mapped_column(
        ForeignKey("deletion_request.id", use_alter=True)
    )
    # A version a job produced: how far it has moved from its last fully trained ancestor (an
    # upload, or a retrain): deletions since, retain-quality change, weight distance (app.jobs.
    # drift). None for uploads.
    drift: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class Dataset(Base):
    __tablename__ = "dataset"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organization.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    location: Mapped[str | None] = mapped_column(Text)
    class_names: Mapped[list[str]] = mapped_column(JSON)
    image_shape: Mapped[list[int] | None] = mapped_column(JSON)
    train_count: Mapped[int] = mapped_column(Integer)
    test_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class DeletionRequest(Base):
    __tablename__ = "deletion_request"
    __table_args__ = (
        UniqueConstraint("org_id", "idempotency_key"),
        Index("ix_deletion_request_org_created", "org_id", "created_at", "id"),
        Index("ix_deletion_request_org_due", "org_id", "due_at"),
    )

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organization.id"))
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
    # The most epoch-equivalents of method work the request allows (None: no limit).
    budget_epochs: Mapped[float | None] = mapped_column(Float)
    caller_reference: Mapped[str | None] = mapped_column(String(200), index=True)
    # The id the controller's privacy platform gave the data-subject request (OpenDSR's
    # subject_request_id, a Transcend request id), for the auditor's lookups.
    upstream_request_id: Mapped[str | None] = mapped_column(String(200), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    body_sha256: Mapped[str] = mapped_column(String(64))
    # SHA-256 of the canonical forget specification and the salt: names what was forgotten
    # without the data, and cannot be checked against guessed ids by anyone without the salt.
    forget_spec_sha256: Mapped[str] = mapped_column(String(64))
    # Random, per request; disclosed only by the evidence export. Null on requests made before
    # salting, whose hash covers the specification alone.
    forget_spec_salt: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    # The statutory clock: received (created_at) plus settings.due_months, plus extensions.
    due_at: Mapped[datetime] = mapped_column(Timestamp)
    # Signed documents ({"payload", "signature"}): the receipt at acceptance, the certificate
    # when the job succeeded. Requests accepted before receipts existed (migration 0004) have none.
    receipt: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    certificate: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Whether ``certificate`` is set, where a listing left the signed documents unread (their
    # JSON was most of a page's decoding); None where it was not asked for.
    certified: Mapped[bool | None] = query_expression()
    # Closed without a success of its own: by an operator, with a reason, after its job was
    # rejected or failed; or by a later request on the same model that forgot all of this one's
    # data (satisfied_by_request_id). A closed request is no longer open nor on the deadlines.
    closed_at: Mapped[datetime | None] = mapped_column(Timestamp)
    closed_by: Mapped[str | None] = mapped_column(String(200))
    close_reason: Mapped[str | None] = mapped_column(Text)
    satisfied_by_request_id: Mapped[str | None] = mapped_column(ForeignKey("deletion_request.id"))


class DueDateExtension(Base):
    """One extension of a request's deadline, with its reason (GDPR Art. 12(3))."""

    __tablename__ = "due_date_extension"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("deletion_request.id"), index=True)
    months: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    previous_due_at: Mapped[datetime] = mapped_column(Timestamp)
    due_at: Mapped[datetime] = mapped_column(Timestamp)
    actor: Mapped[str] = mapped_column(String(200))
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
    # The running claim: a new lease id per claim, and the heartbeat its worker keeps writing.
    # Every write of the worker is conditional on its lease, so a worker presumed lost (and its
    # job re-queued and claimed again) can never record a second result.
    lease_id: Mapped[str | None] = mapped_column(String(32))
    heartbeat_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # When the job's message last reached the broker (None: never, or the send failed).
    sent_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # A job of a coalescing model waits, unsent, until then for others to join it (the sweeper
    # sends it once the time has come); None: it may run at once.
    not_before: Mapped[datetime | None] = mapped_column(Timestamp)
    # Set while (and after) this job's request ran inside another job, which forgot the union
    # of its members' data in one run: the joint job whose outcome this job shares.
    joint_job_id: Mapped[str | None] = mapped_column(ForeignKey("job.id"), index=True)
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
    """Append-only record of everything done: requests, job state changes, downloads, keys.

    Each organisation's events form a hash chain: ``seq`` counts from 1, ``prev_hash`` is the
    ``hash`` of event ``seq - 1`` and ``hash`` covers the canonical serialisation of the row
    (app.audit.chain), so an edited, deleted or reordered row breaks the chain. Rows are
    chained as their transaction commits; on PostgreSQL a trigger refuses UPDATE and DELETE.
    """

    __tablename__ = "audit_event"
    __table_args__ = (
        UniqueConstraint("org_id", "seq"),
        Index("ix_audit_event_org_at", "org_id", "at", "id"),
        Index("ix_audit_event_org_request", "org_id", "request_id", "id"),
        Index("ix_audit_event_org_model", "org_id", "model_id", "id"),
        Index("ix_audit_event_org_caller_reference", "org_id", "caller_reference", "id"),
        Index("ix_audit_event_org_action", "org_id", "action", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organization.id"))
    seq: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    action: Mapped[str] = mapped_column(String(64))
    # Who: "key:<id>" for an API key, "worker:<host>" for a worker, "cli:<user>" for the
    # admin command line.
    actor: Mapped[str] = mapped_column(String(200))
    model_id: Mapped[str | None] = mapped_column(Id)
    model_version_id: Mapped[str | None] = mapped_column(Id)
    dataset_id: Mapped[str | None] = mapped_column(Id)
    request_id: Mapped[str | None] = mapped_column(Id)
    job_id: Mapped[str | None] = mapped_column(Id)
    caller_reference: Mapped[str | None] = mapped_column(String(200))
    client_address: Mapped[str | None] = mapped_column(String(100))
    # The X-Request-ID of the HTTP request that caused the event (None for worker events).
    http_request_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditChainHead(Base):
    """The last event of each organisation's chain: where the next event links on.
    ``updated_at`` is that event's time (a new event is never stamped earlier)."""

    __tablename__ = "audit_chain_head"

    org_id: Mapped[str] = mapped_column(ForeignKey("organization.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class Webhook(Base):
    """A URL told of every state change of the organisation's deletion requests."""

    __tablename__ = "webhook"

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organization.id"), index=True)
    url: Mapped[str] = mapped_column(Text)
    # Kept in clear: the service needs it to sign each delivery (HMAC-SHA256).
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(Timestamp)


class WebhookDelivery(Base):
    """One event to one webhook: written with the state change, sent after commit, retried."""

    __tablename__ = "webhook_delivery"

    id: Mapped[str] = mapped_column(Id, primary_key=True, default=new_id)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhook.id"), index=True)
    event_type: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(Id)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(Timestamp)
