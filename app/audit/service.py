"""The audit trail: append-only rows for every request, job state change and download."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.orm import AuditEvent


def record(
    session: Session,
    action: str,
    *,
    model_id: str | None = None,
    model_version_id: str | None = None,
    dataset_id: str | None = None,
    request_id: str | None = None,
    job_id: str | None = None,
    caller_reference: str | None = None,
    client_address: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    event = AuditEvent(
        action=action,
        model_id=model_id,
        model_version_id=model_version_id,
        dataset_id=dataset_id,
        request_id=request_id,
        job_id=job_id,
        caller_reference=caller_reference,
        client_address=client_address,
        details=details or {},
    )
    session.add(event)
    return event


def search(
    session: Session,
    *,
    model_id: str | None,
    request_id: str | None,
    caller_reference: str | None,
    action: str | None,
    since: datetime | None,
    until: datetime | None,
    after_id: int,
    limit: int,
) -> list[AuditEvent]:
    """Events in the order they were written, after the cursor ``after_id``."""
    query = select(AuditEvent).where(AuditEvent.id > after_id)
    if model_id:
        query = query.where(AuditEvent.model_id == model_id)
    if request_id:
        query = query.where(AuditEvent.request_id == request_id)
    if caller_reference:
        query = query.where(AuditEvent.caller_reference == caller_reference)
    if action:
        query = query.where(AuditEvent.action == action)
    if since:
        query = query.where(AuditEvent.at >= since)
    if until:
        query = query.where(AuditEvent.at < until)
    return list(session.scalars(query.order_by(AuditEvent.id).limit(limit)))
