"""Reading, cancelling and reporting progress on jobs (the database is the source of truth)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from sqlalchemy import ColumnElement, func, select, update
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
        name=a.name,
        media_type=a.media_type,
        sha256=a.sha256,
        size_bytes=a.size_bytes,
        url=f"/v1/jobs/{a.job_id}/artifacts/{a.name}",
    )


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
    if job.status == JobStatus.running and _ask_to_cancel(session, job, actor):
        return job
    if job.status == JobStatus.queued and states.transition(
        session,
        job,
        JobStatus.canceled,
        actor=actor,
        reason="canceled by the client before it started",
    ):
        return job
    if job.status == JobStatus.running:  # a cancel was asked already
        return job
    raise JobNotCancelable(f"job {job.id} is {job.status}; only queued or running jobs cancel")


def _ask_to_cancel(session: Session, job: Job, actor: Actor) -> bool:
    """Mark the running job for cancel; False (``job`` refreshed) when it is no longer running
    (handed back or re-queued a moment ago: then it is canceled as a queued job) or was asked."""
    asked = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == JobStatus.running)
        .where(Job.cancel_requested_at.is_(None))
        .values(cancel_requested_at=utcnow(), updated_at=utcnow())
    )
    session.refresh(job)
    if asked.rowcount != 1:  # type: ignore[attr-defined]
        return False
    states.record_cancel_requested(session, job, actor)
    return True


def take_unsent(session: Session, grace_s: float) -> list[str]:
    """Ids of queued jobs whose send failed (the broker was down at submit) ``grace_s`` ago or
    more, marked as just taken so that several sweepers send each job once."""
    cutoff = utcnow() - timedelta(seconds=grace_s)
    return _take(session, Job.sent_at.is_(None) & (Job.updated_at <= cutoff))


def count_sent_queued(session: Session) -> int:
    """Queued jobs whose message reached the broker: as many messages should be waiting there."""
    query = select(func.count()).where(Job.status == JobStatus.queued, Job.sent_at.is_not(None))
    return int(session.scalar(query) or 0)


def take_stale_sent(session: Session, resend_after_s: float, limit: int) -> list[str]:
    """Ids of at most ``limit`` queued jobs last sent ``resend_after_s`` ago or more, oldest
    first (their message may have been lost with the broker), marked as not sent."""
    cutoff = utcnow() - timedelta(seconds=resend_after_s)
    oldest = (
        select(Job.id)
        .where(Job.status == JobStatus.queued, Job.sent_at <= cutoff)
        .order_by(Job.sent_at)
        .limit(limit)
    )
    return _take(session, Job.id.in_(oldest.scalar_subquery())) if limit > 0 else []


def _take(session: Session, condition: ColumnElement[bool]) -> list[str]:
    taken = session.scalars(
        update(Job)
        .where(Job.status == JobStatus.queued, condition)
        .values(updated_at=utcnow(), sent_at=None)
        .returning(Job.id)
    )
    return list(taken)


@dataclass(frozen=True)
class Recovered:
    job_id: str
    status: JobStatus  # queued (to send), canceled or failed


def recover_lost(session: Session, lease_timeout_s: float, max_attempts: int) -> list[Recovered]:
    """Running jobs whose worker stopped sending heartbeats (killed, stuck, or its machine lost):
    back to the queue, canceled when the client asked for it, or failed once they have had
    ``max_attempts`` claims. The caller sends the re-queued ones after commit."""
    cutoff = utcnow() - timedelta(seconds=lease_timeout_s)
    # A claim by a worker older than leases writes no heartbeat: its last update stands in.
    last_sign = func.coalesce(Job.heartbeat_at, Job.updated_at)
    lost = session.scalars(
        select(Job).where(Job.status == JobStatus.running, last_sign <= cutoff)
    ).all()
    recovered = []
    for job in lost:
        silent = f"no heartbeat from worker {job.worker} for over {lease_timeout_s:g} s"
        # Moved only if still silent: a beat written since the SELECT keeps the job its worker's.
        move = partial(
            states.transition, session, job, lease=job.lease_id, where=[last_sign <= cutoff]
        )
        if job.cancel_requested_at is not None:
            moved = move(JobStatus.canceled, reason=f"canceled by the client ({silent})")
        elif job.attempts < max_attempts:
            moved = move(
                JobStatus.queued,
                reason=f"worker lost ({silent}); re-queued after attempt {job.attempts} of "
                f"{max_attempts}",
                values={"phase": None, "progress": 0.0, "worker": None, "sent_at": None},
            )
        else:
            moved = move(
                JobStatus.failed,
                reason=f"worker lost {job.attempts} times",
                values={
                    "error": f"the job's worker was lost on each of its {job.attempts} attempts "
                    f"({silent}); it may exhaust the worker's memory or crash it: look at the "
                    "worker's log, then submit the request again"
                },
            )
        if moved:
            recovered.append(Recovered(job.id, JobStatus(job.status)))
    return recovered


def heartbeat(session: Session, job_id: str, lease: str) -> bool:
    """The running worker is alive; False when the job no longer holds its lease (re-queued
    after the worker was presumed lost, or ended elsewhere): the worker must stop."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running, Job.lease_id == lease)
        .values(heartbeat_at=utcnow())
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def report_progress(
    session: Session, job_id: str, phase: str, progress: float, lease: str | None = None
) -> tuple[bool, bool]:
    """Write progress of a running job: (cancel requested by the client, lease still held)."""
    condition = [Job.id == job_id, Job.status == JobStatus.running]
    if lease is not None:
        condition.append(Job.lease_id == lease)
    now = utcnow()
    written = session.execute(
        update(Job)
        .where(*condition)
        .values(phase=phase, progress=round(progress, 4), updated_at=now, heartbeat_at=now)
    )
    requested = session.scalar(select(Job.cancel_requested_at).where(Job.id == job_id))
    return requested is not None, bool(written.rowcount == 1)  # type: ignore[attr-defined]
