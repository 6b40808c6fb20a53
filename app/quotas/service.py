"""Per-organisation limits, checked before anything is written (settings: NEPENTHE_QUOTA_*).

- submissions per minute: requests accepted in the last 60 s, from the request table;
- queued jobs: the organisation's jobs waiting for a worker;
- the estimated work of one job, in sample passes (the method's estimate plus a reference's);
- stored bytes: checkpoint versions, job artifacts and uploaded datasets.

Refusals raise problems (429 with Retry-After, 422, 413) and are counted per organisation and
reason for /metrics. The running-jobs limit is not a refusal: the workers hold such jobs back
(``app.jobs.service.claim_next``).
"""

from __future__ import annotations

import logging
import math
import threading
from datetime import timedelta
from functools import lru_cache

from sqlalchemy.orm import Session

from app.config import get_settings
from app.errors import JobCostLimitExceeded, QuotaExceeded, RateLimited, StorageQuotaExceeded
from app.orm import JobStatus, utcnow
from app.quotas import repository as repo
from app.storage import get_store

log = logging.getLogger(__name__)

WINDOW_S = 60.0
# A full queue drains as jobs end; no figure says when, so clients are told to look again soon.
QUEUE_RETRY_AFTER_S = 30
REASONS = ("submissions_per_minute", "queued_jobs", "job_sample_passes", "stored_bytes")

_refusals: dict[tuple[str, str], int] = {}
_refusals_lock = threading.Lock()


def refusals() -> dict[tuple[str, str], int]:
    """{(org id, reason): refusals} answered by this process since it started."""
    with _refusals_lock:
        return dict(_refusals)


def _refuse(org_id: str, reason: str) -> None:
    with _refusals_lock:
        _refusals[(org_id, reason)] = _refusals.get((org_id, reason), 0) + 1
    log.info("quota: organisation %s refused (%s)", org_id, reason)


def check_submission(
    session: Session, org_id: str, output_bytes: int, estimated_sample_passes: float
) -> None:
    """Refuse a new deletion request over one of the organisation's limits; called in the
    submission's own transaction, before any row is written, with the organisation locked."""
    settings = get_settings()
    repo.lock_org(session, org_id)
    per_minute = settings.quota_submissions_per_minute
    if per_minute:
        accepted = repo.accepted_since(session, org_id, utcnow() - timedelta(seconds=WINDOW_S))
        if len(accepted) >= per_minute:
            # Once the one that makes the count reach the limit leaves the window, one fits.
            frees_at = accepted[len(accepted) - per_minute] + timedelta(seconds=WINDOW_S)
            wait = max(1, math.ceil((frees_at - utcnow()).total_seconds()))
            _refuse(org_id, "submissions_per_minute")
            raise RateLimited(
                f"this organisation had {len(accepted)} deletion requests accepted in the last "
                f"{WINDOW_S:g} s; the limit is {per_minute} (NEPENTHE_QUOTA_SUBMISSIONS_PER_MINUTE"
                f"): retry in {wait} s",
                retry_after_s=wait,
                limit=per_minute,
            )
    check_queue_and_cost(session, org_id, output_bytes, estimated_sample_passes)


def check_queue_and_cost(
    session: Session, org_id: str, output_bytes: int, estimated_sample_passes: float
) -> None:
    """The limits a job queued again (a retried request) must meet too: the submission rate
    counts requests, and a retry is not a new one."""
    queued_limit = get_settings().quota_queued_jobs
    if queued_limit:
        queued = repo.org_jobs(session, org_id, JobStatus.queued)
        if queued >= queued_limit:
            _refuse(org_id, "queued_jobs")
            raise QuotaExceeded(
                f"this organisation has {queued} jobs waiting for a worker; the limit is "
                f"{queued_limit} (NEPENTHE_QUOTA_QUEUED_JOBS): retry once some have run, or "
                "cancel some",
                retry_after_s=QUEUE_RETRY_AFTER_S,
                quota="queued_jobs",
                limit=queued_limit,
                queued_jobs=queued,
            )
    check_job_cost(org_id, estimated_sample_passes)
    check_storage(session, org_id, output_bytes, what="the job's output version")


def check_job_cost(org_id: str, estimated_sample_passes: float) -> None:
    cap = get_settings().quota_max_job_sample_passes
    if cap and estimated_sample_passes > cap:
        _refuse(org_id, "job_sample_passes")
        raise JobCostLimitExceeded(
            f"this job is estimated at {estimated_sample_passes:,.0f} sample passes (its method "
            f"plus any retrained reference); the most one job may spend is {cap:,.0f} "
            "(NEPENTHE_QUOTA_MAX_JOB_SAMPLE_PASSES): lower epochs or steps, or choose a cheaper "
            "method",
            estimated_sample_passes=estimated_sample_passes,
            limit_sample_passes=cap,
        )


def check_storage(session: Session, org_id: str, adding: int, what: str = "the upload") -> None:
    """Refuse ``adding`` bytes more when they would take the organisation past its quota."""
    limit = get_settings().quota_stored_bytes
    if not limit:
        return
    stored = stored_bytes(session, org_id).get(org_id, 0)
    if stored + adding > limit:
        _refuse(org_id, "stored_bytes")
        raise StorageQuotaExceeded(
            f"this organisation stores {stored:,} bytes; {what} adds {adding:,} and the quota is "
            f"{limit:,} (NEPENTHE_QUOTA_STORED_BYTES): nothing was stored; ask the operator for "
            "a larger quota",
            stored_bytes=stored,
            adding_bytes=adding,
            limit_bytes=limit,
        )


def stored_bytes(session: Session, org_id: str | None = None) -> dict[str, int]:
    """{org id: bytes it stores}: versions and artifacts from their rows, uploaded datasets
    from the store (content-addressed, so a key's size never changes: asked once)."""
    total = repo.recorded_bytes(session, org_id)
    for org, key in repo.uploaded_dataset_keys(session, org_id):
        total[org] = total.get(org, 0) + _object_size(key)
    return total


@lru_cache(maxsize=65_536)
def _object_size(key: str) -> int:
    return get_store().size(key)
