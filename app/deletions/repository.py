"""Queries on deletion requests, their jobs' creation and their deadline extensions: what they
find or write, no HTTP, no audit."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, defer, with_expression

from app.orm import DeletionRequest, DueDateExtension, Job, JobStatus, ModelVersion

T = TypeVar("T")


@dataclass(frozen=True)
class RequestFilter:
    """The auditor's filters; each one narrows the query in the database."""

    model_id: str | None = None
    caller_reference: str | None = None
    upstream_request_id: str | None = None
    status: JobStatus | None = None
    received_since: datetime | None = None
    received_until: datetime | None = None
    open: bool | None = None
    due_before: datetime | None = None


def get_request(
    session: Session, request_id: str, for_update: bool = False
) -> DeletionRequest | None:
    """The request by id, whatever its organisation (``for_update``: its row locked, FOR NO
    KEY UPDATE: see ``app.audit.chain``)."""
    lock = {"key_share": True} if for_update else None
    return session.get(DeletionRequest, request_id, with_for_update=lock)


def find_by_idempotency_key(session: Session, org_id: str, key: str) -> DeletionRequest | None:
    return session.scalars(
        select(DeletionRequest).where(
            DeletionRequest.org_id == org_id, DeletionRequest.idempotency_key == key
        )
    ).first()


def insert_request(session: Session, request: DeletionRequest) -> None:
    """Insert in a savepoint (``IntegrityError`` when a concurrent request took the idempotency
    key; the transaction stays usable)."""
    with session.begin_nested():
        session.add(request)


def insert_job(session: Session, job: Job) -> None:
    """Insert a new request's job now (its id is then known)."""
    session.add(job)
    session.flush()


def list_requests(
    session: Session,
    org_id: str,
    where: RequestFilter,
    after: DeletionRequest | None,
    closed: Iterable[JobStatus],
    limit: int,
    soonest_due_first: bool = False,
) -> list[DeletionRequest]:
    """The organisation's requests matching ``where`` in the order received (or by deadline),
    after the request ``after``; a request is open while its job's status is not in
    ``closed``. The signed receipt and certificate are left unread (a listing shows neither;
    they were most of its JSON decoding): ``certified`` says whether there is a certificate."""
    query = (
        select(DeletionRequest)
        .join(Job, Job.request_id == DeletionRequest.id)
        .where(DeletionRequest.org_id == org_id)
    )
    query = query.options(
        defer(DeletionRequest.receipt),
        defer(DeletionRequest.certificate),
        with_expression(DeletionRequest.certified, DeletionRequest.certificate.is_not(None)),
    )
    if after is not None:
        query = query.where(
            (DeletionRequest.created_at > after.created_at)
            | ((DeletionRequest.created_at == after.created_at) & (DeletionRequest.id > after.id))
        )
    query = _filtered(query, where, list(closed))
    if soonest_due_first:
        order = (DeletionRequest.due_at, DeletionRequest.id)
    else:
        order = (DeletionRequest.created_at, DeletionRequest.id)
    return list(session.scalars(query.order_by(*order).limit(limit)))


def _filtered(query: Select[Any], where: RequestFilter, closed: list[JobStatus]) -> Select[Any]:
    if where.model_id:
        query = query.join(ModelVersion, ModelVersion.id == DeletionRequest.model_version_id).where(
            ModelVersion.model_id == where.model_id
        )
    equal = {
        DeletionRequest.caller_reference: where.caller_reference,
        DeletionRequest.upstream_request_id: where.upstream_request_id,
        Job.status: where.status,
    }
    for column, wanted in equal.items():
        if wanted:
            query = query.where(column == wanted)
    if where.received_since:
        query = query.where(DeletionRequest.created_at >= where.received_since)
    if where.received_until:
        query = query.where(DeletionRequest.created_at < where.received_until)
    if where.open is not None:
        is_closed = Job.status.in_(closed) | DeletionRequest.closed_at.is_not(None)
        query = query.where(~is_closed if where.open else is_closed)
    if where.due_before:
        query = query.where(DeletionRequest.due_at < where.due_before)
    return query


def rows_with(session: Session, table: type[T], column: Any, keys: Iterable[Any]) -> list[T]:
    """Rows of ``table`` whose ``column`` is one of ``keys``, in insertion (id) order."""
    wanted = list(set(keys))
    if not wanted:
        return []
    order = table.id  # type: ignore[attr-defined]
    return list(session.scalars(select(table).where(column.in_(wanted)).order_by(order)))


def list_extensions(session: Session, request_id: str) -> list[DueDateExtension]:
    query = select(DueDateExtension).where(DueDateExtension.request_id == request_id)
    return list(session.scalars(query.order_by(DueDateExtension.id)))


def insert_extension(session: Session, extension: DueDateExtension) -> None:
    session.add(extension)


def open_ended_short(
    session: Session, org_id: str, model_id: str, dataset_id: str
) -> list[tuple[DeletionRequest, Job]]:
    """Open requests on any version of the model, over the dataset, whose job was rejected
    or failed, oldest first."""
    query = (
        select(DeletionRequest, Job)
        .join(Job, Job.request_id == DeletionRequest.id)
        .join(ModelVersion, ModelVersion.id == DeletionRequest.model_version_id)
        .where(
            DeletionRequest.org_id == org_id,
            DeletionRequest.dataset_id == dataset_id,
            DeletionRequest.closed_at.is_(None),
            ModelVersion.model_id == model_id,
            Job.status.in_([JobStatus.rejected, JobStatus.failed]),
        )
        .order_by(DeletionRequest.created_at, DeletionRequest.id)
    )
    return [(r, j) for r, j in session.execute(query).all()]
