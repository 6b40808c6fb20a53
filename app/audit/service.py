"""The audit trail: append-only, hash-chained rows for everything done, per organisation."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.actors import Actor
from app.audit import chain
from app.audit import repository as repo
from app.keys import get_signer
from app.orm import AuditChainHead, AuditEvent, utcnow


def record(
    session: Session,
    actor: Actor,
    action: str,
    *,
    model_id: str | None = None,
    model_version_id: str | None = None,
    dataset_id: str | None = None,
    request_id: str | None = None,
    job_id: str | None = None,
    caller_reference: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Queue an event; it is chained and written when the session's transaction commits."""
    event = AuditEvent(
        org_id=actor.org_id,
        action=action,
        actor=actor.name,
        model_id=model_id,
        model_version_id=model_version_id,
        dataset_id=dataset_id,
        request_id=request_id,
        job_id=job_id,
        caller_reference=caller_reference,
        client_address=actor.client_address,
        http_request_id=actor.http_request_id,
        details=details or {},
    )
    chain.queue(session, event)
    return event


def start_chain(session: Session, org_id: str) -> None:
    """The empty chain of a new organisation (its head row is what appends lock)."""
    repo.insert_head(session, AuditChainHead(org_id=org_id, seq=0, hash=chain.GENESIS_HASH))


def search(
    session: Session,
    org_id: str,
    *,
    model_id: str | None,
    request_id: str | None,
    caller_reference: str | None,
    action: str | None,
    actor: str | None,
    since: datetime | None,
    until: datetime | None,
    after_seq: int,
    limit: int,
) -> list[AuditEvent]:
    """The organisation's events in chain order, after the cursor ``after_seq``."""
    equal = {
        "model_id": model_id,
        "request_id": request_id,
        "caller_reference": caller_reference,
        "action": action,
        "actor": actor,
    }
    # Time never decreases along a chain (chain._append), so each time bound is also a seq
    # bound, found on the (org_id, at) index: the walk in seq order then starts and stops at
    # the window instead of filtering its way there from the first event.
    start: tuple[datetime, int] | None = None
    if since:
        first = repo.first_seq_at_or_after(session, org_id, since)
        if first is None:
            return []
        start = (since, first)
    end = (until, repo.first_seq_at_or_after(session, org_id, until)) if until else None
    head = repo.get_head(session, org_id)
    up_to = head.seq if head else 0
    return repo.search_events(session, org_id, equal, start, end, after_seq, limit, up_to)


def events_of_request(session: Session, org_id: str, request_id: str) -> list[AuditEvent]:
    head = repo.get_head(session, org_id)
    return repo.events_of_request(session, org_id, request_id, head.seq if head else 0)


def verify(
    session: Session, org_id: str, anchor: tuple[int, str] | None = None
) -> chain.ChainReport:
    """Walk the organisation's whole chain; report the first broken link."""
    report = chain.ChainReport(org_id=org_id)
    # The head first, then the events up to it: events appended during a long walk are not
    # mistaken for a truncation (a deleted last event still is: the head names it).
    head = repo.get_head(session, org_id)
    chain.walk(chain.in_batches(session, org_id, up_to=head.seq if head else None), report)
    chain.check_head(report, head)
    # Rows past the head now (not the head read above: events appended during the walk are
    # covered by the new head) were written around the chain: none is served, all are reported.
    now = repo.read_head(session, org_id)
    chain.check_beyond_head(report, repo.first_seq_after(session, org_id, now.seq if now else 0))
    if anchor is not None:
        seq, expected = anchor
        found = repo.hash_at(session, org_id, seq)
        chain.check_anchor(report, seq, expected, found)
    return report


def signed_head(session: Session, org_id: str) -> dict[str, Any]:
    """The chain head, signed: kept elsewhere, it makes a later truncation detectable."""
    head = repo.get_head(session, org_id)
    seq, digest = (head.seq, head.hash) if head else (0, chain.GENESIS_HASH)
    return get_signer().sign(
        {
            "type": "nepenthe.audit_head",
            "org_id": org_id,
            "seq": seq,
            "hash": digest,
            "exported_at": chain.timestamp(utcnow()),
        }
    )
