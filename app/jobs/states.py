"""The job lifecycle. Every status change goes through ``transition``.

A transition is a conditional UPDATE (``WHERE status = <expected>``): of two processes racing to
move the same job (a duplicate delivery, a cancel during completion), exactly one wins, and only
the winner writes the history row and the audit event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from app.actors import Actor, worker_actor
from app.audit import service as audit
from app.orm import DeletionRequest, Job, JobEvent, JobStatus, ModelVersion, utcnow
from app.webhooks import service as webhooks

ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.queued: frozenset({JobStatus.running, JobStatus.canceled, JobStatus.failed}),
    # running -> queued: its worker was lost (lease expired) or handed it back at shutdown.
    JobStatus.running: frozenset(
        {
            JobStatus.queued,
            JobStatus.succeeded,
            JobStatus.rejected,
            JobStatus.failed,
            JobStatus.canceled,
        }
    ),
    # The client retries its request with other parameters (the request's deadline stands).
    JobStatus.rejected: frozenset({JobStatus.queued}),
    JobStatus.failed: frozenset({JobStatus.queued}),
}


def record_created(session: Session, job: Job, actor: Actor, reason: str) -> None:
    """The first history row of a new job (status ``queued``)."""
    session.add(JobEvent(job_id=job.id, from_status=None, to_status=job.status, reason=reason))
    _audit(session, job, actor, None, JobStatus(job.status), reason, {})


def record_cancel_requested(session: Session, job: Job, actor: Actor) -> None:
    """Audit the client's cancel of a running job (the status changes later, in the worker)."""
    _audit(
        session,
        job,
        actor,
        None,
        None,
        "cancel requested by the client",
        {},
        "job.cancel_requested",
    )


def transition(
    session: Session,
    job: Job,
    to: JobStatus,
    *,
    actor: Actor | None = None,
    reason: str | None = None,
    values: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
    lease: str | None = None,
    where: Sequence[ColumnElement[bool]] = (),
) -> bool:
    """Move ``job`` from its current status to ``to``; False when another process moved it first.

    ``actor`` is who moved it: the API's caller, or (None) the worker running the job.
    ``lease``: the worker's claim; the move happens only while the job still holds it (a worker
    presumed lost whose job was claimed again must not end it). ``where``: further conditions
    the row must still meet when it is moved.
    """
    current = JobStatus(job.status)
    if to not in ALLOWED.get(current, frozenset()):
        return False
    now = utcnow()
    changes: dict[str, Any] = {"status": to, "updated_at": now, **(values or {})}
    if to is JobStatus.running:
        changes.setdefault("started_at", now)
    if to.is_terminal:
        changes.setdefault("finished_at", now)
    if to is JobStatus.queued or to.is_terminal:
        changes.setdefault("lease_id", None)
    if to is JobStatus.queued:  # back on its own: a joint run it was part of is over
        changes.setdefault("joint_job_id", None)
    condition = [Job.id == job.id, Job.status == current, *where]
    if lease is not None:
        condition.append(Job.lease_id == lease)
    result = session.execute(
        update(Job).where(*condition).values(**changes).execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.refresh(job)
        return False
    session.add(JobEvent(job_id=job.id, from_status=current, to_status=to, reason=reason))
    _audit(session, job, actor, current, to, reason, details or {})
    session.refresh(job)
    return True


def _audit(
    session: Session,
    job: Job,
    actor: Actor | None,
    from_status: JobStatus | None,
    to: JobStatus | None,
    reason: str | None,
    details: dict[str, Any],
    action: str | None = None,
) -> None:
    row = session.execute(
        select(
            DeletionRequest.caller_reference,
            DeletionRequest.org_id,
            ModelVersion.model_id,
            ModelVersion.id,
        )
        .join(ModelVersion, ModelVersion.id == DeletionRequest.model_version_id)
        .where(DeletionRequest.id == job.request_id)
    ).one()
    audit.record(
        session,
        actor or worker_actor(row.org_id),
        action or f"job.{to}",
        model_id=row.model_id,
        model_version_id=row.id,
        request_id=job.request_id,
        job_id=job.id,
        caller_reference=row.caller_reference,
        details={"from": from_status, "to": to, "reason": reason, **details},
    )
    if action is None and to is not None:  # a status change (not a cancel request)
        webhooks.notify_job_status(session, job, row.org_id, from_status, to, reason)
