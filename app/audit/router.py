from __future__ import annotations

import re
from datetime import UTC, datetime

from fastapi import APIRouter, Query

from app.audit import service
from app.audit.schemas import AuditEventRead, AuditPage
from app.deps import ReadSessionDep
from app.errors import Unprocessable

router = APIRouter(prefix="/v1/audit", tags=["audit"])


class InvalidPageToken(Unprocessable):
    code = "invalid_page_token"


class InvalidTimeBound(Unprocessable):
    code = "invalid_time_bound"


def _utc(moment: datetime | None, name: str) -> datetime | None:
    if moment is None:
        return None
    try:
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (OverflowError, ValueError) as exc:
        raise InvalidTimeBound(f"{name} is outside the representable range of times") from exc


@router.get("/events", summary="Query the audit trail", response_model=AuditPage)
def list_events(
    session: ReadSessionDep,
    model_id: str | None = None,
    request_id: str | None = None,
    caller_reference: str | None = None,
    action: str | None = None,
    since: datetime | None = Query(None, description="inclusive lower bound (ISO 8601)"),
    until: datetime | None = Query(None, description="exclusive upper bound (ISO 8601)"),
    limit: int = Query(100, ge=1, le=1000),
    page_token: str | None = None,
) -> AuditPage:
    """Audit events in the order they were written, filtered and paginated by cursor."""
    since, until = _utc(since, "since"), _utc(until, "until")
    after_id = 0
    if page_token:
        if not re.fullmatch(r"[0-9]{1,18}", page_token):
            raise InvalidPageToken("page_token is not one this API issued")
        after_id = int(page_token)
    rows = service.search(
        session, model_id=model_id, request_id=request_id, caller_reference=caller_reference,
        action=action, since=since, until=until, after_id=after_id, limit=limit + 1,
    )  # fmt: skip
    items = [AuditEventRead.model_validate(r) for r in rows[:limit]]
    token = str(items[-1].id) if len(rows) > limit else None
    return AuditPage(items=items, next_page_token=token)
