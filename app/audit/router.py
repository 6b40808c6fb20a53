from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query

from app.audit import service
from app.audit.schemas import AuditEventRead, AuditPage, ChainBreak, ChainVerification, SigningKey
from app.deps import ActorDep, AuditDep, ReadSessionDep
from app.errors import InvalidTimeBound, Unprocessable
from app.keys import get_signer
from app.signing import ALGORITHM, public_pem
from app.validation import page_position, utc_bound

router = APIRouter(prefix="/v1", tags=["audit"])
HASH = r"^[0-9a-f]{64}$"


@router.get(
    "/audit/events",
    summary="Query the audit trail",
    response_model=AuditPage,
    responses={422: InvalidTimeBound.openapi()},
)
def list_events(
    session: ReadSessionDep,
    actor: AuditDep,
    model_id: str | None = None,
    request_id: str | None = None,
    caller_reference: str | None = None,
    action: str | None = None,
    by: str | None = Query(None, description="the actor: key:<id>, worker:<host>, cli:<user>"),
    since: datetime | None = Query(None, description="inclusive lower bound (ISO 8601)"),
    until: datetime | None = Query(None, description="exclusive upper bound (ISO 8601)"),
    limit: int = Query(100, ge=1, le=1000),
    page_token: str | None = None,
) -> AuditPage:
    """The organisation's audit events in chain order, filtered in the database and paginated
    by cursor."""
    after_seq = page_position(page_token)
    rows = service.search(
        session,
        actor.org_id,
        model_id=model_id,
        request_id=request_id,
        caller_reference=caller_reference,
        action=action,
        actor=by,
        since=utc_bound(since, "since"),
        until=utc_bound(until, "until"),
        after_seq=after_seq,
        limit=limit + 1,
    )
    items = [AuditEventRead.model_validate(r) for r in rows[:limit]]
    token = str(items[-1].seq) if len(rows) > limit else None
    return AuditPage(items=items, next_page_token=token)


@router.get("/audit/verify", summary="Verify the audit chain", response_model=ChainVerification)
def verify(
    session: ReadSessionDep,
    actor: AuditDep,
    anchor_seq: int | None = Query(None, ge=1, le=2**62, description="seq of an exported head"),
    anchor_hash: str | None = Query(None, pattern=HASH, description="hash of that head"),
) -> ChainVerification:
    """Walk the organisation's whole hash chain and name the first broken link. Given an exported
    head (``anchor_seq`` and ``anchor_hash``), also check that the chain still contains it:
    that is what detects a truncated or rolled-back log."""
    if (anchor_seq is None) != (anchor_hash is None):
        raise Unprocessable("give anchor_seq and anchor_hash together")
    anchor = (anchor_seq, anchor_hash) if anchor_seq is not None and anchor_hash else None
    report = service.verify(session, actor.org_id, anchor)
    return ChainVerification(
        ok=report.ok,
        org_id=report.org_id,
        events_checked=report.events_checked,
        head_seq=report.head_seq,
        head_hash=report.head_hash,
        broken=ChainBreak.model_validate(report.broken) if report.broken else None,
    )


@router.get("/audit/head", summary="Export the signed chain head")
def head(session: ReadSessionDep, actor: AuditDep) -> dict[str, Any]:
    """The last event's seq and hash, signed. Keep it elsewhere; pass it back to verify later
    to show that nothing was cut from the end of the log."""
    return service.signed_head(session, actor.org_id)


@router.get(
    "/signing-key", summary="The public key evidence is signed with", response_model=SigningKey
)
def signing_key(_: ActorDep) -> SigningKey:
    """Publish it: receipts, certificates, exported heads and evidence verify against it
    offline (`nepenthe verify FILE --public-key KEY.pem`)."""
    signer = get_signer()
    return SigningKey(
        algorithm=ALGORITHM, key_id=signer.key_id, public_key_pem=public_pem(signer.public_key)
    )
