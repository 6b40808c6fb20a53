"""The sweeper: every worker process runs one, so jobs are never left behind by a lost worker or
a lost message. The database, not the broker, is the source of truth.

Each pass (at start, then every ``sweep_interval_s``):
- running jobs whose heartbeat is older than ``lease_timeout_s`` are re-queued (or failed after
  ``max_attempts`` claims);
- queued jobs whose send failed (broker down at submit), or whose last send is older than
  ``requeue_after_s`` (the message may be lost with the broker), are sent again.
Several sweepers may run at once: every step is a conditional update, and a duplicate message is
harmless since only one delivery can claim a job.
"""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_ready, worker_shutdown

from app.config import get_settings
from app.db import session_scope
from app.jobs import service as jobs
from app.queue import send_job

log = logging.getLogger(__name__)
_STOP = threading.Event()


def sweep_once() -> dict[str, int]:
    """One pass; returns what it did (for logs and tests)."""
    settings = get_settings()
    with session_scope() as session:
        recovered = jobs.recover_lost(session, settings.lease_timeout_s, settings.max_attempts)
    for lost in recovered:
        log.warning("job %s lost its worker: %s", lost.job_id,
                    "re-queued" if lost.requeued else "failed after its last attempt")  # fmt: skip
    with session_scope() as session:
        unsent = jobs.take_unsent(session, settings.send_grace_s, settings.requeue_after_s)
    sent = sum(send_job(job_id) for job_id in unsent)
    if unsent:
        log.info("sent %d of %d queued jobs that were not (or no longer) in the broker",
                 sent, len(unsent))  # fmt: skip
    return {
        "requeued": sum(r.requeued for r in recovered),
        "failed": sum(not r.requeued for r in recovered),
        "sent": sent,
        "unsent": len(unsent) - sent,
    }


def _loop(interval_s: float) -> None:
    while True:
        try:
            sweep_once()
        except Exception:  # the database or broker may be down: the next pass tries again
            log.warning("sweep failed; trying again in %.0f s", interval_s, exc_info=True)
        if _STOP.wait(interval_s):
            return


@worker_ready.connect
def start_sweeper(**_: object) -> None:
    _STOP.clear()
    interval = get_settings().sweep_interval_s
    threading.Thread(target=_loop, args=(interval,), name="sweeper", daemon=True).start()


@worker_shutdown.connect
def stop_sweeper(**_: object) -> None:
    _STOP.set()
