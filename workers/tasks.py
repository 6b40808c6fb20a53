"""Celery tasks: claim a job, load what it needs, run its recipe, record the outcome."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from celery import Task
from celery.signals import worker_shutting_down

from app.config import get_settings
from app.db import session_scope
from app.jobs import outcome
from app.jobs import service as jobs
from app.observability import log_context
from app.orm import JobStatus, utcnow
from app.queue import RUN_JOB_TASK
from unlearning import jobs as recipes
from unlearning.jobs import cache
from workers.celery_app import app
from workers.failures import describe_failure
from workers.lease import SHUTTING_DOWN, HandBack, Heartbeat, JobLost, TimeLimitExceeded
from workers.progress import JobCanceled, ProgressReporter
from workers.sweeper import release_held

log = logging.getLogger(__name__)

# What repeats between the jobs of one model (the decoded dataset, the built architecture),
# kept by this worker process between jobs, within NEPENTHE_WORKER_CACHE_BYTES.
cache.configure(get_settings().worker_cache_bytes)


def claim(job_id: str) -> str | None:
    """The job's new lease, or None when there is nothing to claim (see ``jobs.claim``)."""
    with session_scope() as session:
        return jobs.claim(session, job_id)


def claim_next(delivered_job_id: str) -> tuple[str, str] | None:
    """The fairest queued job's id and new lease, this delivery's turn (``jobs.claim_next``)."""
    with session_scope() as session:
        return jobs.claim_next(session, delivered_job_id)


def finish(
    job_id: str, to: JobStatus, reason: str, error: str | None = None, lease: str | None = None
) -> bool:
    with session_scope() as session:
        return jobs.finish(session, job_id, to, reason, error=error, lease=lease)


def hand_back(job_id: str, lease: str) -> bool:
    with session_scope() as session:
        return jobs.hand_back(session, job_id, lease)


def pick_device() -> torch.device:
    wanted = get_settings().device
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(wanted)


@worker_shutting_down.connect
def hand_back_on_shutdown(**_: object) -> None:
    # Runs inside the signal handler: only set a flag, the job checks it at its next step.
    SHUTTING_DOWN.set()


@app.task(name=RUN_JOB_TASK, bind=True, acks_late=True)
def run_job(self: Task, job_id: str) -> str:  # noqa: ARG001 - bound for Celery's retry API
    with log_context(job_id=job_id):  # every log line of the job carries its id
        return _claim_and_run(job_id)


def _claim_and_run(delivered_job_id: str) -> str:
    # When the broker handed the job over: the hand-over is the time from job.queued to this.
    timings: dict[str, Any] = {"received_at": utcnow().isoformat()}
    start = time.perf_counter()
    claimed = claim_next(delivered_job_id)
    timings["claim_s"] = time.perf_counter() - start
    if claimed is None:
        log.info(
            "job %s is not queued, or may not run now, and no other job may: delivery ignored",
            delivered_job_id,
        )
        return "skipped"
    job_id, lease = claimed
    try:
        with log_context(job_id=job_id):
            log.info("job %s claimed (message of job %s)", job_id, delivered_job_id)
            settings = get_settings()
            limit = settings.job_time_limit_s or math.inf
            with Heartbeat(
                job_id, lease, settings.heartbeat_interval_s, settings.stall_timeout_s, limit
            ) as beat:
                report = ProgressReporter(job_id, settings.progress_interval_s, heartbeat=beat)
                return _run_claimed(job_id, lease, report, timings)
    finally:
        release_held()  # a running slot of the job's organisation is free again


def _run_claimed(
    job_id: str, lease: str, report: ProgressReporter, timings: dict[str, Any] | None = None
) -> str:
    """Run the claimed job; ``timings`` (the worker's own phases, seconds) go to its metrics."""
    timings = {} if timings is None else timings
    ctx = None
    try:
        start = time.perf_counter()
        ctx = outcome.load_context(job_id, lease)
        timings["context_s"] = time.perf_counter() - start
        report("load", 0.0)  # fetching the weights from a remote store is part of loading
        fetch_start = time.perf_counter()
        weights = ctx.weights_path()
        fetched_in = timings["fetch_s"] = time.perf_counter() - fetch_start
        start = time.perf_counter()
        result = recipes.run(ctx.job, weights, pick_device(), report)
        timings["recipe_s"] = time.perf_counter() - start
        seconds = result.metrics["phase_seconds"]
        seconds["load"] = seconds.get("load", 0.0) + fetched_in
        # Progress writes happen inside the phases above (each a short transaction).
        timings["progress_writes"] = report.writes
        timings["progress_write_s"] = report.write_seconds
        result.metrics["timings"] = timings
        if not outcome.store_outcome(ctx, result):
            log.warning("job %s ended elsewhere before its result was stored", job_id)
            return "superseded"
    except JobCanceled as exc:
        finish(job_id, JobStatus.canceled, reason=str(exc), lease=lease)
        return "canceled"
    except HandBack:
        handed = hand_back(job_id, lease)
        log.info("job %s %s", job_id, "handed back to the queue" if handed else "ended meanwhile")
        return "handed_back"
    except TimeLimitExceeded:
        limit = get_settings().job_time_limit_s
        log.warning("job %s ran past its time limit of %g s", job_id, limit)
        reason = f"time limit: running for over {limit:g} s (stopped by its worker)"
        error = jobs.time_limit_error(limit)
        finish(job_id, JobStatus.failed, reason=reason, error=error, lease=lease)
        return "failed"
    except JobLost as exc:
        log.warning("%s; this worker stops it and records nothing", exc)
        return "lost"
    except Exception as exc:
        log.exception("job %s failed", job_id)
        method, params = (ctx.job.method, ctx.job.params) if ctx else (None, {})
        reason, error = describe_failure(exc, report.phase, method, params)
        finish(job_id, JobStatus.failed, reason=reason, error=error, lease=lease)
        return "failed"
    status = "rejected" if result.failures else "succeeded"
    log.info("job %s %s", job_id, status)
    return status
