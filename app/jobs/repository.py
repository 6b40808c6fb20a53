"""Queries on jobs, their artifacts and their history."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.orm import Session

from app.orm import (
    DeletionRequest,
    Job,
    JobArtifact,
    JobEvent,
    JobStatus,
    Model,
    ModelVersion,
    utcnow,
)


def find_for_org(session: Session, org_id: str, job_id: str) -> Job | None:
    """The organisation's job; another organisation's is not found."""
    return session.scalars(
        select(Job)
        .join(DeletionRequest, DeletionRequest.id == Job.request_id)
        .where(Job.id == job_id, DeletionRequest.org_id == org_id)
    ).first()


def find_with_output_for_org(
    session: Session, org_id: str, job_id: str
) -> tuple[Job, ModelVersion | None] | None:
    """The organisation's job and the version it produced, in one statement (status polls)."""
    row = session.execute(
        select(Job, ModelVersion)
        .join(DeletionRequest, DeletionRequest.id == Job.request_id)
        .outerjoin(ModelVersion, ModelVersion.id == Job.output_version_id)
        .where(Job.id == job_id, DeletionRequest.org_id == org_id)
    ).first()
    return (row[0], row[1]) if row is not None else None


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


def claimed_values(lease: str, host: str) -> dict[str, Any]:
    """What a claim writes on a job that starts running under ``lease`` on worker ``host``."""
    return {
        "attempts": Job.attempts + 1,
        "worker": host,
        "phase": None,
        "progress": 0.0,
        "lease_id": lease,
        "heartbeat_at": utcnow(),
    }


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


def _run_of(job_id: str, lease: str) -> list[ColumnElement[bool]]:
    """The running job and the jobs joined to its run, all holding ``lease``."""
    return [
        or_(Job.id == job_id, Job.joint_job_id == job_id),
        Job.status == JobStatus.running,
        Job.lease_id == lease,
    ]


def beat(session: Session, job_id: str, lease: str) -> bool:
    """Write a heartbeat (for the jobs joined to its run too); False when the job no longer
    holds ``lease``."""
    written = session.scalars(
        update(Job).where(*_run_of(job_id, lease)).values(heartbeat_at=utcnow()).returning(Job.id)
    )
    return job_id in set(written)


def write_progress(
    session: Session, job_id: str, phase: str, progress: float, lease: str | None
) -> bool:
    """Progress of a running job (holding ``lease``, when given, and then of the jobs joined to
    its run too); False when none was written for the job itself."""
    if lease is not None:
        condition = _run_of(job_id, lease)
    else:
        condition = [Job.id == job_id, Job.status == JobStatus.running]
    now = utcnow()
    written = session.scalars(
        update(Job)
        .where(*condition)
        .values(phase=phase, progress=round(progress, 4), updated_at=now, heartbeat_at=now)
        .returning(Job.id)
    )
    return job_id in set(written)


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


# Fair scheduling (app.jobs.service.claim_next): what each organisation has queued and ran.


def may_start() -> ColumnElement[bool]:
    """Queued jobs not waiting for others to join them (app.jobs.coalescing)."""
    return or_(Job.not_before.is_(None), Job.not_before <= utcnow())


def queued_orgs(session: Session) -> dict[str, datetime]:
    """{org id: when its oldest queued job that may start was created}, for organisations with
    such jobs."""
    query = (
        select(DeletionRequest.org_id, func.min(Job.created_at))
        .join(DeletionRequest, DeletionRequest.id == Job.request_id)
        .where(Job.status == JobStatus.queued, may_start())
        .group_by(DeletionRequest.org_id)
    )
    return {str(org): oldest for org, oldest in session.execute(query)}


def last_started(session: Session, org_ids: list[str]) -> dict[str, datetime]:
    """{org id: when a worker last claimed one of its jobs}, for those that had one claimed."""
    query = (
        select(DeletionRequest.org_id, func.max(Job.started_at))
        .join(DeletionRequest, DeletionRequest.id == Job.request_id)
        .where(DeletionRequest.org_id.in_(org_ids), Job.started_at.is_not(None))
        .group_by(DeletionRequest.org_id)
    )
    return {org: last for org, last in session.execute(query) if last is not None}


def oldest_queued(session: Session, org_id: str) -> Job | None:
    query = (
        select(Job)
        .join(DeletionRequest, DeletionRequest.id == Job.request_id)
        .where(DeletionRequest.org_id == org_id, Job.status == JobStatus.queued, may_start())
        .order_by(Job.created_at, Job.id)
        .limit(1)
    )
    return session.scalars(query).first()


# Coalescing (app.jobs.coalescing): the queued requests of one version, and a run's members.


def model_of_version(session: Session, version_id: str) -> Model:
    query = select(Model).join(ModelVersion, ModelVersion.model_id == Model.id)
    return session.scalars(query.where(ModelVersion.id == version_id)).one()


def queued_on_version(session: Session, version_id: str) -> list[tuple[Job, DeletionRequest]]:
    """The queued jobs of requests on ``version_id`` with their requests, oldest first."""
    query = (
        select(Job, DeletionRequest)
        .join(DeletionRequest, DeletionRequest.id == Job.request_id)
        .where(DeletionRequest.model_version_id == version_id, Job.status == JobStatus.queued)
        .order_by(Job.created_at, Job.id)
    )
    return [(job, request) for job, request in session.execute(query)]


def requests_that_produced(session: Session, version_ids: list[str]) -> list[DeletionRequest]:
    """The requests that produced any of ``version_ids``: each version's own, and every member
    of the joint run that produced it (their jobs name it as their output)."""
    own = select(ModelVersion.produced_by_request_id).where(ModelVersion.id.in_(version_ids))
    joint = select(Job.request_id).where(
        Job.output_version_id.in_(version_ids), Job.status == JobStatus.succeeded
    )
    query = select(DeletionRequest).where(
        or_(DeletionRequest.id.in_(own.scalar_subquery()), DeletionRequest.id.in_(joint))
    )
    return list(session.scalars(query))


def joined(session: Session, joint_job_id: str, lease: str | None) -> list[Job]:
    """The running jobs joined to ``joint_job_id``'s run (holding ``lease``, when given)."""
    condition = [Job.joint_job_id == joint_job_id, Job.status == JobStatus.running]
    if lease is not None:
        condition.append(Job.lease_id == lease)
    return list(session.scalars(select(Job).where(*condition).order_by(Job.created_at, Job.id)))


def org_of(session: Session, job: Job) -> str:
    query = select(DeletionRequest.org_id).where(DeletionRequest.id == job.request_id)
    return str(session.scalar(query))


def mark_waiting(session: Session, job_id: str, phase: str | None) -> bool:
    """A queued job whose message was used up without running it: not sent any more, and
    ``phase`` says why it waits (None: its send is simply to be made again)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued)
        .values(sent_at=None, phase=phase, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def held_by_org(session: Session, phase: str) -> dict[str, list[str]]:
    """{org id: ids of its queued jobs in ``phase``, oldest first}."""
    query = (
        select(DeletionRequest.org_id, Job.id)
        .join(DeletionRequest, DeletionRequest.id == Job.request_id)
        .where(Job.status == JobStatus.queued, Job.phase == phase)
        .order_by(Job.created_at, Job.id)
    )
    held: dict[str, list[str]] = {}
    for org, job_id in session.execute(query):
        held.setdefault(org, []).append(job_id)
    return held


def release(session: Session, job_ids: list[str], phase: str) -> list[str]:
    """Those of ``job_ids`` still held in ``phase``, now no longer held (each taken once)."""
    if not job_ids:
        return []
    taken = session.scalars(
        update(Job)
        .where(Job.id.in_(job_ids), Job.status == JobStatus.queued, Job.phase == phase)
        .values(phase=None, updated_at=utcnow())
        .returning(Job.id)
    )
    return list(taken)


def running_started_before(session: Session, cutoff: datetime) -> Sequence[Job]:
    query = select(Job).where(Job.status == JobStatus.running, Job.started_at <= cutoff)
    return session.scalars(query).all()
