"""What an auditor takes away: one request's evidence as a signed JSON document, and many
requests as CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from sqlalchemy.orm import Session

from app.audit import service as audit
from app.audit.chain import timestamp
from app.audit.schemas import AuditEventRead
from app.db import session_scope
from app.deletions import service
from app.deletions.evidence import hash_recipe
from app.deletions.schemas import DeletionRequestRead
from app.jobs import service as jobs
from app.jobs.schemas import JobEventRead
from app.keys import get_signer
from app.orm import DeletionRequest, utcnow
from app.signing import public_pem

CSV_COLUMNS = (
    "request_id",
    "caller_reference",
    "upstream_request_id",
    "model_id",
    "model_version_id",
    "method",
    "forget_spec_sha256",
    "received_at",
    "due_at",
    "status",
    "open",
    "overdue",
    "completed_at",
    "extensions",
    "output_version_id",
    "output_sha256",
    "certificate_issued",
)


def evidence(session: Session, request: DeletionRequest) -> dict[str, Any]:
    """Everything recorded about one request, signed as one document."""
    read = service.to_read(session, request)
    job = jobs.for_request(session, request.id)
    signer = get_signer()
    return signer.sign(
        {
            "type": "nepenthe.evidence",
            "exported_at": timestamp(utcnow()),
            "request": read.model_dump(mode="json"),
            # The salt lets whoever holds the specification recompute forget_spec_sha256.
            "forget_spec": {
                "salt": request.forget_spec_salt,
                "hash": hash_recipe(request.forget_spec_salt is not None),
            },
            "receipt": request.receipt,
            "certificate": request.certificate,
            "job_events": [
                JobEventRead.model_validate(e).model_dump(mode="json")
                for e in jobs.events(session, job.id)
            ],
            "audit_events": [
                AuditEventRead.model_validate(e).model_dump(mode="json")
                for e in audit.events_of_request(session, request.org_id, request.id)
            ],
            "versions": [v.model_dump(mode="json") for v in service.containment(session, request)],
            "public_key": {"key_id": signer.key_id, "pem": public_pem(signer.public_key)},
        }
    )


def csv_row(read: DeletionRequestRead) -> list[Any]:
    output = read.job.output_version
    return [
        read.id,
        read.caller_reference,
        read.upstream_request_id,
        read.model_id,
        read.model_version_id,
        read.method,
        read.forget_spec_sha256,
        read.received_at.isoformat(),
        read.due_at.isoformat(),
        read.job.status,
        read.open,
        read.overdue,
        read.completed_at.isoformat() if read.completed_at else "",
        sum(e.months for e in read.extensions),
        output.id if output else "",
        output.sha256 if output else "",
        read.certificate_url is not None,
    ]


def csv_lines(org_id: str, where: service.RequestFilter, limit: int) -> Iterator[str]:
    """The matching requests as CSV, a page at a time (each page its own short read)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    after, left = None, limit
    while left > 0:
        with session_scope(read_only=True) as session:
            page = service.list_requests(session, org_id, where, after, min(500, left))
            for read in service.to_read_many(session, page):
                writer.writerow(spreadsheet_safe(csv_row(read)))
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if len(page) < min(500, left):
            return
        left -= len(page)
        after = page[-1].id


def spreadsheet_safe(row: list[Any]) -> list[Any]:
    """Cells a spreadsheet would run as formulas get a leading quote (CSV injection, OWASP)."""
    risky = ("=", "+", "-", "@", "\t", "\r")
    return [f"'{v}" if isinstance(v, str) and v[:1] in risky else v for v in row]
