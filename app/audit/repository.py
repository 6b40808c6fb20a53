"""Queries on the audit trail and its chain heads: what they find or write, no HTTP. (Events
are recorded through app.audit.service, which chains them at commit.)"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.orm import AuditChainHead, AuditEvent


def insert_head(session: Session, head: AuditChainHead) -> None:
    session.add(head)


def get_head(session: Session, org_id: str) -> AuditChainHead | None:
    return session.get(AuditChainHead, org_id)


def lock_head(session: Session, org_id: str) -> AuditChainHead:
    """The organisation's chain head as the database holds it, locked until the transaction
    ends (not a cached copy)."""
    return session.scalars(
        select(AuditChainHead)
        .where(AuditChainHead.org_id == org_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def insert_event(session: Session, event: AuditEvent) -> None:
    session.add(event)


def events_after(
    session: Session, org_id: str, after_seq: int, up_to: int | None, limit: int
) -> list[AuditEvent]:
    """The organisation's events after seq ``after_seq`` (up to seq ``up_to``), in seq order."""
    query = select(AuditEvent).where(AuditEvent.org_id == org_id, AuditEvent.seq > after_seq)
    if up_to is not None:
        query = query.where(AuditEvent.seq <= up_to)
    return list(session.scalars(query.order_by(AuditEvent.seq).limit(limit)))


def search_events(
    session: Session,
    org_id: str,
    equal: dict[str, Any],
    since: tuple[datetime, int] | None,
    until: tuple[datetime, int | None] | None,
    after_seq: int,
    limit: int,
    up_to: int,
) -> list[AuditEvent]:
    """The organisation's events in seq order after ``after_seq`` and up to the chain head's
    seq ``up_to`` whose columns named in ``equal`` have those values (None or empty: any), at
    or after ``since`` = (time, its first seq) and before ``until`` = (time, its first seq if
    any)."""
    query = select(AuditEvent).where(
        AuditEvent.org_id == org_id, AuditEvent.seq > after_seq, AuditEvent.seq <= up_to
    )
    for name, wanted in equal.items():
        if wanted:
            query = query.where(getattr(AuditEvent, name) == wanted)
    if since is not None:
        moment, first = since
        query = query.where(AuditEvent.at >= moment, AuditEvent.seq >= first)
    if until is not None:
        moment, past = until
        query = query.where(AuditEvent.at < moment)
        if past is not None:
            query = query.where(AuditEvent.seq < past)
    return list(session.scalars(query.order_by(AuditEvent.seq).limit(limit)))


def first_seq_at_or_after(session: Session, org_id: str, moment: datetime) -> int | None:
    """The seq of the organisation's first event at or after ``moment`` (on the (org_id, at)
    index)."""
    return session.scalar(
        select(AuditEvent.seq)
        .where(AuditEvent.org_id == org_id, AuditEvent.at >= moment)
        .order_by(AuditEvent.at, AuditEvent.id)
        .limit(1)
    )


def events_of_request(
    session: Session, org_id: str, request_id: str, up_to: int
) -> list[AuditEvent]:
    query = select(AuditEvent).where(
        AuditEvent.org_id == org_id,
        AuditEvent.request_id == request_id,
        AuditEvent.seq <= up_to,
    )
    return list(session.scalars(query.order_by(AuditEvent.seq)))


def read_head(session: Session, org_id: str) -> AuditChainHead | None:
    """The head as the database holds it now, not the session's cached copy."""
    return session.scalars(
        select(AuditChainHead)
        .where(AuditChainHead.org_id == org_id)
        .execution_options(populate_existing=True)
    ).one_or_none()


def first_seq_after(session: Session, org_id: str, seq: int) -> int | None:
    """The lowest seq above ``seq`` of the organisation's events, if any."""
    return session.scalar(
        select(func.min(AuditEvent.seq)).where(AuditEvent.org_id == org_id, AuditEvent.seq > seq)
    )


def hash_at(session: Session, org_id: str, seq: int) -> str | None:
    """The hash of the organisation's event ``seq``, if there is one."""
    return session.scalar(
        select(AuditEvent.hash).where(AuditEvent.org_id == org_id, AuditEvent.seq == seq)
    )
