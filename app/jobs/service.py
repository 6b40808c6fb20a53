"""Reading, cancelling and reporting progress on jobs (the database is the source of truth)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.actors import Actor
from app.errors import ArtifactNotFound, JobNotCancelable, JobNotFound
from app.jobs import states
from app.jobs.schemas import ArtifactRead, JobRead
from app.models.service import version_read
from app.orm import DeletionRequest, Job, JobArtifact, JobEvent, JobStatus, ModelVersion, utcnow


def get(session: Session, org_id: str, job_id: str) -> Job:
    """The organisation's job; another organisation's is not found."""
    job = session.scalars(
        select(Job)
        .join(DeletionRequest, DeletionRequest.id == Job.request_id)
        .where(Job.id == job_id, DeletionRequest.org_id == org_id)
    ).first()
    if job is None:
        raise JobNotFound(f"no job {job_id!r}")
    return job


def for_request(session: Session, request_id: str) -> Job:
    job = session.scalars(select(Job).where(Job.request_id == request_id)).one()
    return job


def artifacts(session: Session, job_id: str) -> list[JobArtifact]:
    query = select(JobArtifact).where(JobArtifact.job_id == job_id).order_by(JobArtifact.id)
    return list(session.scalars(query))


def artifact(session: Session, job: Job, name: str) -> JobArtifact:
    found = session.scalars(
        select(JobArtifact).where(JobArtifact.job_id == job.id, JobArtifact.name == name)
    ).first()
    if found is None:
        raise ArtifactNotFound(f"job {job.id} has no artifact {name!r}")
    return found


def artifact_read(a: JobArtifact) -> ArtifactRead:
    return ArtifactRead(
        name=a.name, media_type=a.media_type, sha256=a.sha256, size_bytes=a.size_bytes,
        url=f"/v1/jobs/{a.job_id}/artifacts/{a.name}",
    )  # fmt: skip


def to_read(session: Session, job: Job) -> JobRead:
    output = session.get(ModelVersion, job.output_version_id) if job.output_version_id else None
    return job_read(job, output, artifacts(session, job.id))


def job_read(job: Job, output: ModelVersion | None, files: list[JobArtifact]) -> JobRead:
    """The job as the API shows it, from rows already loaded (lists load them in batches)."""
    return JobRead(
        id=job.id,
        request_id=job.request_id,
        status=job.status,
        phase=job.phase,
        progress=job.progress,
        error=job.error,
        metrics=job.metrics,
        output_version=version_read(output) if output else None,
        artifacts=[artifact_read(a) for a in files],
        cancel_requested=job.cancel_requested_at is not None,
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        updated_at=job.updated_at,
    )


def events(session: Session, job_id: str) -> list[JobEvent]:
    return list(
        session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
    )


def cancel(session: Session, actor: Actor, job_id: str) -> Job:
    """Cancel a queued job at once; ask a running job's worker to stop at its next check."""
    job = get(session, actor.org_id, job_id)
    if job.status == JobStatus.queued and states.transition(
        session, job, JobStatus.canceled, actor=actor,
        reason="canceled by the client before it started",
    ):  # fmt: skip
        return job
    if job.status == JobStatus.running:
        asked = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.cancel_requested_at.is_(None))
            .values(cancel_requested_at=utcnow(), updated_at=utcnow())
        )
        if asked.rowcount == 1:  # type: ignore[attr-defined]
            states.record_cancel_requested(session, job, actor)
        session.refresh(job)
        return job
    raise JobNotCancelable(f"job {job.id} is {job.status}; only queued or running jobs cancel")


def take_stale_queued(session: Session, older_than_s: float) -> list[str]:
    """Ids of jobs queued for longer than ``older_than_s`` (their message may be lost), marked
    as just re-sent, so that several workers starting together send each job once."""
    now = utcnow()
    cutoff = now - timedelta(seconds=older_than_s)
    taken = session.scalars(
        update(Job)
        .where(Job.status == JobStatus.queued, Job.updated_at <= cutoff)
        .values(updated_at=now)
        .returning(Job.id)
    )
    return list(taken)


def report_progress(session: Session, job_id: str, phase: str, progress: float) -> bool:
    """Write progress of a running job; returns True when the client asked to cancel it."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running)
        .values(phase=phase, progress=round(progress, 4), updated_at=utcnow())
    )
    requested = session.scalar(select(Job.cancel_requested_at).where(Job.id == job_id))
    return requested is not None
