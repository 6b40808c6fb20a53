"""Reading, cancelling and reporting progress on jobs (the database is the source of truth)."""

from __future__ import annotations

import logging
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy.orm import Session

from app.actors import Actor
from app.audit import service as audit
from app.config import get_settings
from app.deletions import repository as deletions_repo
from app.errors import ArtifactNotFound, JobNotCancelable, JobNotFound
from app.jobs import coalescing, repository, states
from app.jobs.schemas import ArtifactRead, JobRead
from app.models import service as models
from app.models.service import version_read
from app.orm import Job, JobArtifact, JobStatus, ModelVersion, utcnow
from app.queue import enqueue_after_commit
from app.quotas import repository as quotas_repo

log = logging.getLogger(__name__)

# The phase of a queued job that waits for its organisation's running limit
# (NEPENTHE_QUOTA_RUNNING_JOBS): it has no message in the broker until ``release_held``.
HELD = "held_by_quota"


def get(session: Session, org_id: str, job_id: str) -> Job:
    """The organisation's job; another organisation's is not found."""
    job = repository.find_for_org(session, org_id, job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id!r}")
    return job


for_request = repository.for_request
artifacts = repository.artifacts
events = repository.events


def artifact(session: Session, job: Job, name: str) -> JobArtifact:
    found = repository.find_artifact(session, job.id, name)
    if found is None:
        raise ArtifactNotFound(f"job {job.id} has no artifact {name!r}")
    return found


def download_artifact(session: Session, actor: Actor, job_id: str, name: str) -> JobArtifact:
    """The artifact to send, its download audited (the audit scope shows who saw which grid)."""
    job = get(session, actor.org_id, job_id)
    found = artifact(session, job, name)
    request = deletions_repo.get_request(session, job.request_id)
    version = models.version_of_request(session, request)
    audit.record(
        session,
        actor,
        "job_artifact.downloaded",
        model_id=version.model_id if version else None,
        request_id=job.request_id,
        job_id=job.id,
        caller_reference=request.caller_reference if request else None,
        details={"name": found.name, "sha256": found.sha256},
    )
    return found


def artifact_read(a: JobArtifact) -> ArtifactRead:
    return ArtifactRead(
        name=a.name,
        media_type=a.media_type,
        sha256=a.sha256,
        size_bytes=a.size_bytes,
        url=f"/v1/jobs/{a.job_id}/artifacts/{a.name}",
    )


def read(session: Session, org_id: str, job_id: str) -> JobRead:
    """The organisation's job as the API shows it (what a status poll answers)."""
    found = repository.find_with_output_for_org(session, org_id, job_id)
    if found is None:
        raise JobNotFound(f"no job {job_id!r}")
    job, output = found
    return job_read(job, output, artifacts(session, job.id))


def to_read(session: Session, job: Job) -> JobRead:
    return job_read(job, models.output_of(session, job), artifacts(session, job.id))


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
        not_before=job.not_before,
        joint_job_id=job.joint_job_id,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        updated_at=job.updated_at,
    )


def cancel(session: Session, actor: Actor, job_id: str) -> Job:
    """Cancel a queued job at once; ask a running job's worker to stop at its next check."""
    job = get(session, actor.org_id, job_id)
    if job.status == JobStatus.running and job.joint_job_id is not None:
        if _leave_joint_run(session, job, actor):
            return job
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


def _leave_joint_run(session: Session, job: Job, actor: Actor) -> bool:
    """Cancel a job that runs inside another's run at once: the joint run goes on for the
    others and certifies nothing for it (a run that had read its work already forgets its data
    too)."""
    return states.transition(
        session,
        job,
        JobStatus.canceled,
        actor=actor,
        reason=f"canceled by the client while joined to job {job.joint_job_id}; that run goes "
        "on for its other requests and certifies nothing for this one",
    )


def _ask_to_cancel(session: Session, job: Job, actor: Actor) -> bool:
    """Mark the running job for cancel; False (``job`` refreshed) when it is no longer running
    (handed back or re-queued a moment ago: then it is canceled as a queued job) or was asked."""
    asked = repository.mark_cancel_requested(session, job.id)
    session.refresh(job)
    if not asked:
        return False
    states.record_cancel_requested(session, job, actor)
    return True


def take_unsent(session: Session, grace_s: float) -> list[str]:
    """Ids of queued jobs whose send failed (the broker was down at submit) ``grace_s`` ago or
    more, marked as just taken so that several sweepers send each job once."""
    cutoff = utcnow() - timedelta(seconds=grace_s)
    # Jobs held by their organisation's running limit are sent by ``release_held`` instead.
    not_held = Job.phase.is_(None) | (Job.phase != HELD)
    # Jobs waiting for others to join them are sent once their time has come.
    unsent = Job.sent_at.is_(None) & (Job.updated_at <= cutoff) & not_held
    return repository.take_queued(session, unsent & repository.may_start())


def count_sent_queued(session: Session) -> int:
    """Queued jobs whose message reached the broker: as many messages should be waiting there."""
    return repository.count_sent_queued(session)


def take_stale_sent(session: Session, resend_after_s: float, limit: int) -> list[str]:
    """Ids of at most ``limit`` queued jobs last sent ``resend_after_s`` ago or more, oldest
    first (their message may have been lost with the broker), marked as not sent."""
    if limit <= 0:
        return []
    cutoff = utcnow() - timedelta(seconds=resend_after_s)
    return repository.take_queued(session, repository.oldest_sent_queued(cutoff, limit))


@dataclass(frozen=True)
class Recovered:
    job_id: str
    status: JobStatus  # queued (to send), canceled or failed


def recover_lost(session: Session, lease_timeout_s: float, max_attempts: int) -> list[Recovered]:
    """Running jobs whose worker stopped sending heartbeats (killed, stuck, or its machine lost):
    back to the queue, canceled when the client asked for it, or failed once they have had
    ``max_attempts`` claims. The caller sends the re-queued ones after commit."""
    cutoff = utcnow() - timedelta(seconds=lease_timeout_s)
    last_sign = repository.last_sign_of_life()
    recovered = []
    for job in repository.silent_running(session, cutoff):
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
    return repository.beat(session, job_id, lease)


def report_progress(
    session: Session, job_id: str, phase: str, progress: float, lease: str | None = None
) -> tuple[bool, bool]:
    """Write progress of a running job: (cancel requested by the client, lease still held)."""
    written = repository.write_progress(session, job_id, phase, progress, lease)
    return repository.cancel_requested(session, job_id), written


def claim(session: Session, job_id: str) -> str | None:
    """queued -> running, as a conditional update; returns the claim's new lease (None: a
    duplicate delivery, or a job no longer queued, found nothing to claim)."""
    lease = uuid.uuid4().hex
    job = session.get(Job, job_id)
    if job is None:
        log.warning("job %s does not exist; message dropped", job_id)
        return None
    claimed = states.transition(
        session,
        job,
        JobStatus.running,
        reason="claimed by a worker",
        values=repository.claimed_values(lease, socket.gethostname()),
    )
    if not claimed:
        return None
    coalescing.join(session, job, lease)
    return lease


def finish(
    session: Session,
    job_id: str,
    to: JobStatus,
    reason: str,
    error: str | None = None,
    lease: str | None = None,
) -> bool:
    """A running job ends without a result (canceled or failed)."""
    job = session.get(Job, job_id)
    assert job is not None
    moved = states.transition(session, job, to, reason=reason, values={"error": error}, lease=lease)
    if moved and lease is not None:
        _end_members(session, job_id, lease, to, reason, error)
    return moved


def _end_members(
    session: Session, job_id: str, lease: str, to: JobStatus, reason: str, error: str | None
) -> None:
    """The jobs joined to a run that ended without a result: failed with it, or back in the
    queue when it was canceled (they did not ask to be)."""
    for member in coalescing.members(session, job_id, lease):
        if to is JobStatus.canceled:
            _back_to_queue(session, member, lease, f"its joint job {job_id} was canceled")
        else:
            states.transition(
                session,
                member,
                to,
                lease=lease,
                reason=f"its joint job {job_id} ended: {reason}",
                values={"error": error},
            )


def _back_to_queue(session: Session, job: Job, lease: str, why: str) -> bool:
    """running -> queued without counting the attempt, sent again after commit."""
    moved = states.transition(
        session,
        job,
        JobStatus.queued,
        lease=lease,
        reason=f"handed back: {why}",
        values={"attempts": Job.attempts - 1, "phase": None, "progress": 0.0, "worker": None},
    )
    if moved:
        enqueue_after_commit(session, job.id)
    return moved


def hand_back(session: Session, job_id: str, lease: str) -> bool:
    """running -> queued at shutdown, sent again after commit. The attempt is not counted: the
    job did not fail, its worker stopped. A job the client asked to cancel is canceled instead."""
    job = session.get(Job, job_id)
    assert job is not None
    members = coalescing.members(session, job_id, lease)
    if job.cancel_requested_at is not None:
        reason = "canceled by the client as its worker stopped"
        moved = states.transition(session, job, JobStatus.canceled, lease=lease, reason=reason)
    else:
        moved = _back_to_queue(session, job, lease, "its worker was asked to stop")
    if moved:
        for member in members:
            _back_to_queue(session, member, lease, f"the worker of job {job_id} was asked to stop")
    return moved


def claim_next(session: Session, delivered_job_id: str) -> tuple[str, str] | None:
    """Claim the job that is fairest to run now, whichever job's message was delivered: (its
    id, its lease), or None when no queued job may run.

    A message is one worker's turn. The turn goes to the organisation with the fewest running
    jobs that is under its running limit (NEPENTHE_QUOTA_RUNNING_JOBS), of those to the one
    whose job a worker claimed least recently, and to its oldest queued job: one organisation's
    many jobs do not make another's wait behind them all. Every queued job keeps one message
    (or is held): the delivered job, when it stays queued, is sent again when the turn went to
    a job that had none, held when its organisation is at its limit.
    """
    limit = get_settings().quota_running_jobs
    full: set[str] = set()
    for _ in range(8):  # a lost race (another worker took the job) tries the next
        job = _fairest(session, limit, full)
        if job is None:
            break
        org = repository.org_of(session, job)
        if limit:
            quotas_repo.lock_org(session, org)  # two workers never both take the last slot
            if quotas_repo.org_jobs(session, org, JobStatus.running) >= limit:
                full.add(org)
                continue
        had_message = job.sent_at is not None
        lease = claim(session, job.id)
        if lease is None:
            continue
        if job.id != delivered_job_id and not had_message:
            # The turn ran a job without a message: the delivered one needs another.
            delivered = session.get(Job, delivered_job_id)
            if delivered is not None and delivered.status == JobStatus.queued:
                enqueue_after_commit(session, delivered_job_id)
        return job.id, lease
    delivered = session.get(Job, delivered_job_id)
    if delivered is not None and delivered.status == JobStatus.queued:
        org = repository.org_of(session, delivered)
        at_limit = limit and quotas_repo.org_jobs(session, org, JobStatus.running) >= limit
        # Held: sent again once the organisation runs fewer; else sent by the sweeper.
        repository.mark_waiting(session, delivered_job_id, HELD if at_limit else None)
    return None


def _fairest(session: Session, limit: int, full: set[str]) -> Job | None:
    queued = repository.queued_orgs(session)
    running = {
        org: n for (org, _), n in quotas_repo.jobs_by_org(session, [JobStatus.running]).items()
    }
    eligible = [
        org for org in queued if org not in full and (not limit or running.get(org, 0) < limit)
    ]
    if not eligible:
        return None
    last = repository.last_started(session, eligible)

    def turn(org: str) -> tuple[int, bool, datetime, datetime]:
        served = last.get(org)
        return (running.get(org, 0), served is not None, served or queued[org], queued[org])

    return repository.oldest_queued(session, min(eligible, key=turn))


def release_held(session: Session) -> list[str]:
    """Ids of held jobs whose organisation may now run them (no more than its free running
    slots), no longer held; the caller sends them after commit."""
    limit = get_settings().quota_running_jobs
    held = repository.held_by_org(session, HELD)
    if not held:
        return []
    running = {
        org: n for (org, _), n in quotas_repo.jobs_by_org(session, [JobStatus.running]).items()
    }
    released: list[str] = []
    for org, job_ids in held.items():
        free = len(job_ids) if not limit else max(0, limit - running.get(org, 0))
        released += repository.release(session, job_ids[:free], HELD)
    return released


def time_limit_error(limit_s: float) -> str:
    return (
        f"the job ran longer than the service's time limit of {limit_s:g} s "
        "(NEPENTHE_JOB_TIME_LIMIT_S) and was stopped; submit it again with fewer epochs or "
        "steps, or a cheaper method"
    )


def end_overdue(session: Session, limit_s: float) -> list[str]:
    """Running jobs past the time limit (their worker did not stop them: it is between two
    checks, or stuck), ended as failed; their worker's lease is void, so it records nothing."""
    if not limit_s:
        return []
    cutoff = utcnow() - timedelta(seconds=limit_s)
    ended = []
    for job in repository.running_started_before(session, cutoff):
        if states.transition(
            session,
            job,
            JobStatus.failed,
            lease=job.lease_id,
            reason=f"time limit: running for over {limit_s:g} s (ended by the sweeper)",
            values={"error": time_limit_error(limit_s)},
            where=[Job.started_at <= cutoff],
        ):
            ended.append(job.id)
    return ended
