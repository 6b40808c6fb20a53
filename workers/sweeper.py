"""The sweeper: every worker process runs one, so jobs are never left behind by a lost worker or
a lost message. The database, not the broker, is the source of truth.

Each pass (at start, then every ``sweep_interval_s``):
- running jobs whose heartbeat is older than ``lease_timeout_s`` are re-queued and sent (or
  canceled, when the client asked, or failed after ``max_attempts`` claims);
- running jobs past ``job_time_limit_s`` are failed;
- queued jobs whose send failed (broker down at submit) are sent after ``send_grace_s``, and
  jobs held by their organisation's running limit once it has a free slot;
- when the broker holds fewer messages than there are queued jobs it was sent (a broker that
  kept nothing across a restart), that many of the oldest, sent ``requeue_after_s`` ago or more,
  are sent again. Jobs merely waiting behind a backlog are not sent twice.
Several sweepers may run at once: every step is a conditional update, and a duplicate message is
harmless since only one delivery can claim a job.
"""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_init, worker_shutdown

from app.config import get_settings
from app.db import session_scope
from app.jobs import service as jobs
from app.orm import JobStatus
from app.queue import send_job, waiting_messages

log = logging.getLogger(__name__)
_STOP = threading.Event()


def sweep_once() -> dict[str, int]:
    """One pass; returns what it did (for logs and tests)."""
    settings = get_settings()
    with session_scope() as session:
        recovered = jobs.recover_lost(session, settings.lease_timeout_s, settings.max_attempts)
    for lost in recovered:
        log.warning("job %s lost its worker: %s", lost.job_id, lost.status)
    requeued = [r.job_id for r in recovered if r.status is JobStatus.queued]
    with session_scope() as session:
        overdue = jobs.end_overdue(session, settings.job_time_limit_s)
    for job_id in overdue:
        log.warning(
            "job %s ran past the time limit of %g s: failed", job_id, settings.job_time_limit_s
        )
    with session_scope() as session:
        unsent = jobs.take_unsent(session, settings.send_grace_s)
        released = jobs.release_held(session)
    sent, pending = send_until_refused(requeued + unsent + released)
    if pending == 0:
        sent += resend_lost_messages(settings.requeue_after_s)
    return {
        "requeued": len(requeued),
        "failed": sum(r.status is JobStatus.failed for r in recovered),
        "canceled": sum(r.status is JobStatus.canceled for r in recovered),
        "timed_out": len(overdue),
        "released": len(released),
        "sent": sent,
        "unsent": pending,
    }


def release_held() -> int:
    """Send the held jobs whose organisation may run more now (after a job of this worker
    ended: its slot is free at once, not at the next sweep). Returns how many were sent."""
    try:
        with session_scope() as session:
            released = jobs.release_held(session)
    except Exception:  # the sweeper releases them at its next pass
        log.warning("held jobs not released", exc_info=True)
        return 0
    return send_until_refused(released)[0]


def send_until_refused(job_ids: list[str]) -> tuple[int, int]:
    """Send each job; stop at the first the broker refuses (it is down: each further try would
    wait out the publish timeout). Returns (sent, left); the left ones are sent next pass."""
    for done, job_id in enumerate(job_ids):
        if not send_job(job_id):
            return done, len(job_ids) - done
    if job_ids:
        log.info("sent %d queued jobs that were not in the broker", len(job_ids))
    return len(job_ids), 0


def resend_lost_messages(resend_after_s: float) -> int:
    waiting = waiting_messages()
    if waiting is None:
        return 0
    with session_scope() as session:
        missing = jobs.count_sent_queued(session) - waiting
        stale = jobs.take_stale_sent(session, resend_after_s, missing)
    if stale:
        log.warning(
            "the broker holds %d messages fewer than the queued jobs it was sent; sending %d again",
            missing,
            len(stale),
        )
    return send_until_refused(stale)[0]


def _loop(interval_s: float) -> None:
    while True:
        try:
            sweep_once()
        except Exception:  # the database or broker may be down: the next pass tries again
            log.warning("sweep failed; trying again in %.0f s", interval_s, exc_info=True)
        if _STOP.wait(interval_s):
            return


@worker_init.connect
def start_sweeper(**_: object) -> None:
    """Started with the worker, before it connects to the broker: jobs of lost workers are
    recovered even while the broker is down."""
    _STOP.clear()
    interval = get_settings().sweep_interval_s
    threading.Thread(target=_loop, args=(interval,), name="sweeper", daemon=True).start()


@worker_shutdown.connect
def stop_sweeper(**_: object) -> None:
    _STOP.set()
