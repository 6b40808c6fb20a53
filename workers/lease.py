"""A running job's lease: the heartbeat that shows its worker is alive, and the worker's stop.

A worker that is killed (SIGKILL, out-of-memory killer, lost machine) stops writing heartbeats;
the sweeper (``workers.sweeper``) then re-queues its job. That does not depend on the broker:
the filesystem and SQLite transports never redeliver a killed task at all.
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
import time
from types import TracebackType

from app.db import session_scope
from app.jobs import service as jobs

log = logging.getLogger(__name__)

# Set when the worker was asked to stop (SIGTERM, SIGINT): the running job hands itself back to
# the queue at its next check instead of holding the shutdown for the rest of its run.
SHUTTING_DOWN = threading.Event()


class JobLost(Exception):
    """The job no longer holds this worker's lease: it was re-queued (this worker was presumed
    lost) or ended elsewhere. The worker stops and records nothing."""


class HandBack(Exception):
    """The worker is shutting down: the job goes back to the queue for another worker."""


class TimeLimitExceeded(Exception):
    """The job ran past NEPENTHE_JOB_TIME_LIMIT_S: the worker ends it as failed."""


class Heartbeat:
    """While the job runs, a thread writes its heartbeat every ``interval_s``.

    The thread keeps beating through long steps that report no progress (a big evaluation), for
    up to ``stall_timeout_s`` since the job's last check; a database that is briefly down only
    skips beats. ``lost`` is set once the job no longer holds
    the lease, and ``check`` turns that (or the worker's shutdown, or ``time_limit_s`` passed
    since the claim) into an exception at the job's next cooperative check.
    """

    def __init__(
        self,
        job_id: str,
        lease: str,
        interval_s: float,
        stall_timeout_s: float = math.inf,
        time_limit_s: float = math.inf,
    ) -> None:
        self.job_id = job_id
        self.lease = lease
        self.interval_s = interval_s
        self.stall_timeout_s = stall_timeout_s
        self.time_limit_s = time_limit_s
        self._started = time.monotonic()
        self.lost = threading.Event()
        self._last_check = time.monotonic()
        self._stop = threading.Event()
        # The thread logs with the job's id, like the task that started it.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name=f"heartbeat-{job_id}", daemon=True
        )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)

    def check(self) -> None:
        self._last_check = time.monotonic()
        if self.lost.is_set():
            raise JobLost(f"job {self.job_id} was taken from this worker (lease expired)")
        if SHUTTING_DOWN.is_set():
            raise HandBack(f"the worker is shutting down; job {self.job_id} goes back to the queue")
        if self._last_check - self._started > self.time_limit_s:
            raise TimeLimitExceeded(f"job {self.job_id} ran past its time limit")

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if time.monotonic() - self._last_check > self.stall_timeout_s:
                # Alive but stuck (a hung kernel or read, a deadlock): stop vouching for it, so
                # that its lease expires and the sweeper gives the job to another worker.
                log.error(
                    "job %s made no progress for %.0f s; its lease is left to expire",
                    self.job_id,
                    self.stall_timeout_s,
                )
                return
            try:
                with session_scope() as session:
                    held = jobs.heartbeat(session, self.job_id, self.lease)
            except Exception:  # the database may be down for a moment: try again next beat
                log.warning("heartbeat of job %s not written", self.job_id, exc_info=True)
                continue
            if not held:  # ended (a beat after the last transition) or taken: the task says
                log.info("job %s no longer holds this worker's lease", self.job_id)
                self.lost.set()
                return
