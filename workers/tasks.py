"""Celery tasks: thin wrappers that claim a job, run the pipeline and record the outcome."""

from __future__ import annotations

import logging
import socket
import uuid

from celery import Task
from celery.signals import worker_shutting_down

from app.config import get_settings
from app.db import session_scope
from app.jobs import states
from app.observability import log_context
from app.orm import Job, JobStatus, utcnow
from app.queue import RUN_JOB_TASK, enqueue_after_commit
from workers import i2i_pipeline, pipeline
from workers.celery_app import app
from workers.failures import describe_failure
from workers.lease import SHUTTING_DOWN, HandBack, Heartbeat, JobLost
from workers.progress import JobCanceled, ProgressReporter

log = logging.getLogger(__name__)


def claim(job_id: str) -> str | None:
    """queued -> running, as a conditional update; returns the claim's new lease (None: a
    duplicate delivery, or a job no longer queued, found nothing to claim)."""
    lease = uuid.uuid4().hex
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("job %s does not exist; message dropped", job_id)
            return None
        claimed = states.transition(
            session,
            job,
            JobStatus.running,
            reason="claimed by a worker",
            values={
                "attempts": Job.attempts + 1,
                "worker": socket.gethostname(),
                "progress": 0.0,
                "lease_id": lease,
                "heartbeat_at": utcnow(),
            },
        )
    return lease if claimed else None


def finish(
    job_id: str, to: JobStatus, reason: str, error: str | None = None, lease: str | None = None
) -> bool:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return states.transition(
            session, job, to, reason=reason, values={"error": error}, lease=lease
        )


def hand_back(job_id: str, lease: str) -> bool:
    """running -> queued at shutdown, sent again after commit. The attempt is not counted: the
    job did not fail, its worker stopped. A job the client asked to cancel is canceled instead."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        if job.cancel_requested_at is not None:
            reason = "canceled by the client as its worker stopped"
            return states.transition(session, job, JobStatus.canceled, lease=lease, reason=reason)
        moved = states.transition(
            session,
            job,
            JobStatus.queued,
            lease=lease,
            reason="handed back: its worker was asked to stop",
            values={"attempts": Job.attempts - 1, "phase": None, "progress": 0.0, "worker": None},
        )
        if moved:
            enqueue_after_commit(session, job_id)
    return moved


@worker_shutting_down.connect
def hand_back_on_shutdown(**_: object) -> None:
    # Runs inside the signal handler: only set a flag, the job checks it at its next step.
    SHUTTING_DOWN.set()


@app.task(name=RUN_JOB_TASK, bind=True, acks_late=True)
def run_job(self: Task, job_id: str) -> str:  # noqa: ARG001 - bound for Celery's retry API
    with log_context(job_id=job_id):  # every log line of the job carries its id
        return _claim_and_run(job_id)


def _claim_and_run(job_id: str) -> str:
    lease = claim(job_id)
    if lease is None:
        log.info("job %s is not queued; duplicate or canceled delivery ignored", job_id)
        return "skipped"
    log.info("job %s claimed", job_id)
    settings = get_settings()
    with Heartbeat(job_id, lease, settings.heartbeat_interval_s, settings.stall_timeout_s) as beat:
        return _run_claimed(
            job_id, lease, ProgressReporter(job_id, settings.progress_interval_s, heartbeat=beat)
        )


def _run_claimed(job_id: str, lease: str, report: ProgressReporter) -> str:
    ctx = None
    try:
        ctx = pipeline.load_context(job_id, lease)
        runner = i2i_pipeline.run if ctx.task == "image_to_image" else pipeline.run
        outcome = runner(ctx, report)
        if not pipeline.store_outcome(ctx, outcome):
            log.warning("job %s ended elsewhere before its result was stored", job_id)
            return "superseded"
    except JobCanceled as exc:
        finish(job_id, JobStatus.canceled, reason=str(exc), lease=lease)
        return "canceled"
    except HandBack:
        handed = hand_back(job_id, lease)
        log.info("job %s %s", job_id, "handed back to the queue" if handed else "ended meanwhile")
        return "handed_back"
    except JobLost as exc:
        log.warning("%s; this worker stops it and records nothing", exc)
        return "lost"
    except Exception as exc:
        log.exception("job %s failed", job_id)
        method, params = (ctx.method, ctx.params) if ctx else (None, {})
        reason, error = describe_failure(exc, report.phase, method, params)
        finish(job_id, JobStatus.failed, reason=reason, error=error, lease=lease)
        return "failed"
    status = "rejected" if outcome.failures else "succeeded"
    log.info("job %s %s", job_id, status)
    return status
