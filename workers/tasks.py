"""Celery tasks: thin wrappers that claim a job, run the pipeline and record the outcome."""

from __future__ import annotations

import logging
import socket
import traceback

from celery import Task
from celery.signals import worker_ready

from app.config import get_settings
from app.db import session_scope
from app.jobs import service as jobs
from app.jobs import states
from app.orm import Job, JobStatus
from app.queue import RUN_JOB_TASK, send_job
from workers import i2i_pipeline, pipeline
from workers.celery_app import app
from workers.progress import JobCanceled, ProgressReporter

log = logging.getLogger(__name__)


def claim(job_id: str) -> bool:
    """queued -> running, as a conditional update: a duplicate delivery finds nothing to claim."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("job %s does not exist; message dropped", job_id)
            return False
        return states.transition(
            session, job, JobStatus.running, reason="claimed by a worker",
            values={"attempts": Job.attempts + 1, "worker": socket.gethostname(), "progress": 0.0},
        )  # fmt: skip


def finish(job_id: str, to: JobStatus, reason: str, error: str | None = None) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        states.transition(session, job, to, reason=reason, values={"error": error})


@worker_ready.connect
def resend_stale_jobs(**_: object) -> None:
    """Re-send jobs left queued: the database, not the broker, is the source of truth.

    A duplicate send is harmless, since only one delivery can claim a job.
    """
    with session_scope() as session:
        stale = jobs.take_stale_queued(session, get_settings().requeue_after_s)
    sent = sum(send_job(job_id) for job_id in stale)
    if stale:
        log.info("re-sent %d of %d jobs left queued", sent, len(stale))


@app.task(name=RUN_JOB_TASK, bind=True, acks_late=True)
def run_job(self: Task, job_id: str) -> str:  # noqa: ARG001 - bound for Celery's retry API
    if not claim(job_id):
        log.info("job %s is not queued; duplicate or canceled delivery ignored", job_id)
        return "skipped"
    log.info("job %s claimed", job_id)
    try:
        ctx = pipeline.load_context(job_id)
        runner = i2i_pipeline.run if ctx.task == "image_to_image" else pipeline.run
        outcome = runner(ctx, ProgressReporter(job_id, get_settings().progress_interval_s))
        if not pipeline.store_outcome(ctx, outcome):
            log.warning("job %s ended elsewhere before its result was stored", job_id)
            return "superseded"
    except JobCanceled as exc:
        finish(job_id, JobStatus.canceled, reason=str(exc))
        return "canceled"
    except Exception as exc:
        log.exception("job %s failed", job_id)
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        finish(job_id, JobStatus.failed, reason="the job raised an error", error=detail)
        return "failed"
    status = "rejected" if outcome.failures else "succeeded"
    log.info("job %s %s", job_id, status)
    return status
