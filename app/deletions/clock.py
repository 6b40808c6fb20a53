"""The statutory clock: a request is due a set number of months after it was received
(GDPR Art. 12(3): one month), and may be extended, with a reason, by at most two more."""

from __future__ import annotations

import calendar
from datetime import datetime

from sqlalchemy.orm import Session

from app.actors import Actor
from app.audit import service as audit
from app.config import get_settings
from app.deletions import repository as repo
from app.errors import ExtensionRefused
from app.orm import DeletionRequest, DueDateExtension, Job, JobStatus, utcnow

# A request is carried out once its job succeeded, and withdrawn once canceled; a failed or
# rejected job leaves the obligation open (retry it, or close it with a reason), so its clock
# keeps running.
CLOSED = (JobStatus.succeeded, JobStatus.canceled)


def add_months(moment: datetime, months: int) -> datetime:
    """The same day ``months`` later, or the month's last day when it is shorter (31 Jan + 1
    month = 28 or 29 Feb)."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def due_at(received_at: datetime, extended_months: int = 0) -> datetime:
    # Counted from receipt each time: an extension of a deadline clamped to 28 February still
    # ends on the 31st of the next month.
    return add_months(received_at, get_settings().due_months + extended_months)


def _months_between(start: datetime, end: datetime) -> int:
    return (end.year - start.year) * 12 + end.month - start.month


def is_open(job_status: str, closed_at: datetime | None) -> bool:
    return closed_at is None and JobStatus(job_status) not in CLOSED


def extend(
    session: Session, actor: Actor, request: DeletionRequest, job: Job, months: int, reason: str
) -> DueDateExtension:
    """Push the deadline back. Refused for a closed request, after the original deadline (the
    data subject must be told within the first period), and beyond the allowed total."""
    if not is_open(job.status, request.closed_at):
        raise ExtensionRefused(f"the request is closed (its job {job.status}); nothing to extend")
    granted = repo.list_extensions(session, request.id)
    # The deadline the request was given when received (settings may have changed since).
    original = granted[0].previous_due_at if granted else request.due_at
    base_months = _months_between(request.created_at, original)
    if utcnow() > original:
        raise ExtensionRefused(
            "an extension must be decided within the first period, which ended on "
            f"{original.isoformat()}"
        )
    used = sum(e.months for e in granted)
    allowed = get_settings().max_extension_months
    if used + months > allowed:
        raise ExtensionRefused(
            f"extensions may add {allowed} months in all; {used} already granted",
            months_left=allowed - used,
        )
    extension = DueDateExtension(
        request_id=request.id,
        months=months,
        reason=reason,
        previous_due_at=request.due_at,
        due_at=add_months(request.created_at, base_months + used + months),
        actor=actor.name,
    )
    repo.insert_extension(session, extension)
    request.due_at = extension.due_at
    audit.record(
        session,
        actor,
        "deletion_request.extended",
        request_id=request.id,
        caller_reference=request.caller_reference,
        details={
            "months": months,
            "reason": reason,
            "previous_due_at": extension.previous_due_at.isoformat(),
            "due_at": extension.due_at.isoformat(),
        },
    )
    return extension
