"""Queries on jobs, their artifacts and their history."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from app.orm import DeletionRequest, Job, JobArtifact, JobEvent, JobStatus, ModelVersion, utcnow


def find_for_org(session: Session, org_id: str, job_id: str) -> Job | None:
    """The organisation's job; another organisation's is not found."""
    return session.scalars(
        select(Job)
        .join(DeletionRequest, DeletionRequest.id == Job.request_id)
        .where(Job.id == job_id, DeletionRequest.org_id == org_id)
    ).first()


def for_request(session: Session, request_id: str) -> Job:
    return session.scalars(select(Job).where(Job.request_id == request_id)).one()


def artifacts(session: Session, job_id: str) -> list[JobArtifact]:
    query = select(JobArtifact).where(JobArtifact.job_id == job_id).order_by(JobArtifact.id)
    return list(session.scalars(query))


def find_artifact(session: Session, job_id: str, name: str) -> JobArtifact | None:
    return session.scalars(
        select(JobArtifact).where(JobArtifact.job_id == job_id, JobArtifact.name == name)
    ).first()


def events(session: Session, job_id: str) -> list[JobEvent]:
    query = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
    return list(session.scalars(query))


def mark_cancel_requested(session: Session, job_id: str) -> bool:
    """Mark a running job not yet asked to cancel; False when it was not such a job."""
    asked = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running)
        .where(Job.cancel_requested_at.is_(None))
        .values(cancel_requested_at=utcnow(), updated_at=utcnow())
    )
    return bool(asked.rowcount == 1)  # type: ignore[attr-defined]


def take_queued(session: Session, condition: ColumnElement[bool]) -> list[str]:
    """Ids of queued jobs matching ``condition``, marked as just taken and not sent."""
    taken = session.scalars(
        update(Job)
        .where(Job.status == JobStatus.queued, condition)
        .values(updated_at=utcnow(), sent_at=None)
        .returning(Job.id)
    )
    return list(taken)


def oldest_sent_queued(cutoff: datetime, limit: int) -> ColumnElement[bool]:
    """The condition naming at most ``limit`` queued jobs last sent at ``cutoff`` or before."""
    oldest = (
        select(Job.id)
        .where(Job.status == JobStatus.queued, Job.sent_at <= cutoff)
        .order_by(Job.sent_at)
        .limit(limit)
    )
    return Job.id.in_(oldest.scalar_subquery())


def count_sent_queued(session: Session) -> int:
    query = select(func.count()).where(Job.status == JobStatus.queued, Job.sent_at.is_not(None))
    return int(session.scalar(query) or 0)


def last_sign_of_life() -> ColumnElement[datetime]:
    # A claim by a worker older than leases writes no heartbeat: its last update stands in.
    return func.coalesce(Job.heartbeat_at, Job.updated_at)


def silent_running(session: Session, cutoff: datetime) -> Sequence[Job]:
    query = select(Job).where(Job.status == JobStatus.running, last_sign_of_life() <= cutoff)
    return session.scalars(query).all()


def beat(session: Session, job_id: str, lease: str) -> bool:
    """Write a heartbeat; False when the job no longer holds ``lease``."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running, Job.lease_id == lease)
        .values(heartbeat_at=utcnow())
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def write_progress(
    session: Session, job_id: str, phase: str, progress: float, lease: str | None
) -> bool:
    """Progress of a running job (holding ``lease``, when given); False when none was written."""
    condition = [Job.id == job_id, Job.status == JobStatus.running]
    if lease is not None:
        condition.append(Job.lease_id == lease)
    now = utcnow()
    written = session.execute(
        update(Job)
        .where(*condition)
        .values(phase=phase, progress=round(progress, 4), updated_at=now, heartbeat_at=now)
    )
    return bool(written.rowcount == 1)  # type: ignore[attr-defined]


def cancel_requested(session: Session, job_id: str) -> bool:
    query = select(Job.cancel_requested_at).where(Job.id == job_id)
    return session.scalar(query) is not None


def referenced_keys(session: Session, keys: list[str]) -> set[str]:
    """The storage keys among ``keys`` that an artifact or a model version refers to."""
    return set(
        session.scalars(
            select(JobArtifact.storage_key)
            .where(JobArtifact.storage_key.in_(keys))
            .union(select(ModelVersion.storage_key).where(ModelVersion.storage_key.in_(keys)))
        )
    )


def mark_sent(session: Session, job_id: str, only_queued: bool = False) -> None:
    """Record that the job's message went (or is about to go) to the broker."""
    query = update(Job).where(Job.id == job_id)
    if only_queued:
        query = query.where(Job.status == JobStatus.queued)
    session.execute(query.values(sent_at=utcnow()).execution_options(synchronize_session=False))
