"""The audit trail in the console: filters, the chain's verification, a CSV export."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from app.audit import service as audit
from app.audit.schemas import AuditEventRead
from app.console.deps import AuditDep
from app.console.templating import render
from app.db import session_scope
from app.deletions.export import spreadsheet_safe
from app.deps import ReadSessionDep
from app.errors import Unprocessable
from app.models import service as models
from app.validation import utc_bound

router = APIRouter()
PAGE = 100
FILTERS = ("action", "by", "model_id", "request_id", "caller_reference", "since", "until")
CSV_COLUMNS = [
    "seq",
    "at",
    "action",
    "actor",
    "model_id",
    "model_version_id",
    "request_id",
    "job_id",
    "caller_reference",
    "client_address",
    "details",
    "hash",
]


def _when(text: str, name: str) -> datetime | None:
    if not text:
        return None
    try:
        return utc_bound(datetime.fromisoformat(text), name)
    except ValueError:
        raise Unprocessable(f"{name!r} must be a date or time (ISO 8601)") from None


def _search(session: Any, org: str, query: dict[str, str], after: int, limit: int) -> list[Any]:
    # A model by name or id, as everywhere in the console (an unknown one is a 404, not an
    # empty page).
    model_id = models.get_model(session, org, query["model_id"]).id if query["model_id"] else None
    return audit.search(
        session,
        org,
        model_id=model_id,
        request_id=query["request_id"] or None,
        caller_reference=query["caller_reference"] or None,
        action=query["action"] or None,
        actor=query["by"] or None,
        since=_when(query["since"], "since"),
        until=_when(query["until"], "until"),
        after_seq=after,
        limit=limit,
    )


def _query(request: Request) -> dict[str, str]:
    return {name: request.query_params.get(name, "").strip() for name in FILTERS}


@router.get("/audit")
def audit_page(
    request: Request, session: ReadSessionDep, user: AuditDep, after: int = 0
) -> Response:
    query = _query(request)
    rows = _search(session, user.actor.org_id, query, max(after, 0), PAGE + 1)
    events = [AuditEventRead.model_validate(r) for r in rows[:PAGE]]
    next_page = None
    if len(rows) > PAGE:
        url = request.url.include_query_params(after=events[-1].seq)
        next_page = f"{url.path}?{url.query}"
    return render(request, "audit.html", user, events=events, query=query, next_page=next_page)


@router.get("/api/audit/verify")
def verify(session: ReadSessionDep, user: AuditDep) -> dict[str, Any]:
    """The whole chain walked, as GET /v1/audit/verify (fetched by the page once it shows)."""
    report = audit.verify(session, user.actor.org_id)
    return {
        "ok": report.ok,
        "events_checked": report.events_checked,
        "head_seq": report.head_seq,
        "head_hash": report.head_hash,
        "broken": report.broken,
    }


@router.get("/audit/export.csv")
def export_csv(request: Request, user: AuditDep) -> StreamingResponse:
    query = _query(request)
    _when(query["since"], "since"), _when(query["until"], "until")  # refuse bad bounds up front
    return StreamingResponse(
        _csv_lines(user.actor.org_id, query),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="audit-events.csv"'},
    )


def _csv_lines(org: str, query: dict[str, str]) -> Iterator[str]:
    """The matching events, a page at a time (each page its own short read)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    after = 0
    while True:
        with session_scope(read_only=True) as session:
            page = [
                AuditEventRead.model_validate(r) for r in _search(session, org, query, after, 500)
            ]
        for e in page:
            row = e.model_dump(mode="json")
            writer.writerow(
                spreadsheet_safe([row[c] if c != "details" else _details(e) for c in CSV_COLUMNS])
            )
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if len(page) < 500:
            return
        after = page[-1].seq


def _details(event: AuditEventRead) -> str:
    return json.dumps(event.details, sort_keys=True)
