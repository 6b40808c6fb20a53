"""Throttled progress reporting from a running job to the database, and its cooperative checks:
cancel by the client, a lost lease, the worker's shutdown."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from sqlalchemy.exc import InterfaceError, OperationalError

from app.db import session_scope
from app.jobs import service as jobs
from workers.lease import Heartbeat, JobLost

log = logging.getLogger(__name__)

# (phase, relative weight) in the order a job runs them; the pipeline sets the plan of each job
# from its method and options, so ``progress`` rises steadily from 0 to 1.
Plan = Sequence[tuple[str, float]]


def phase_ranges(plan: Plan) -> dict[str, tuple[float, float]]:
    total = sum(weight for _, weight in plan) or 1.0
    ranges: dict[str, tuple[float, float]] = {}
    done = 0.0
    for phase, weight in plan:
        ranges[phase] = (done / total, (done + weight) / total)
        done += weight
    return ranges


class JobCanceled(Exception):
    """The client asked to cancel the running job."""


class ProgressReporter:
    """Called by the methods as they go (``report(phase, fraction)``); each call is also a point
    where the job may stop: a cancel, a lease taken by the sweeper, or the worker's shutdown."""

    def __init__(
        self,
        job_id: str,
        interval_s: float,
        plan: Plan = (),
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self.job_id = job_id
        self.interval_s = interval_s
        self.ranges = phase_ranges(plan)
        self.heartbeat = heartbeat
        self.phase: str | None = None
        self._last_write = 0.0
        self.writes = 0  # progress written to the database, and the time it took
        self.write_seconds = 0.0

    def set_plan(self, plan: Plan) -> None:
        self.ranges = phase_ranges(plan)

    def __call__(self, phase: str, fraction: float) -> None:
        if self.heartbeat is not None:
            self.heartbeat.check()
        now = time.monotonic()
        phase_changed = phase != self.phase
        if not phase_changed and now - self._last_write < self.interval_s:
            return
        lo, hi = self.ranges.get(phase, (0.0, 1.0))
        overall = lo + (hi - lo) * min(max(fraction, 0.0), 1.0)
        lease = self.heartbeat.lease if self.heartbeat else None
        start = time.perf_counter()
        try:
            with session_scope() as session:
                cancel, held = jobs.report_progress(session, self.job_id, phase, overall, lease)
            self.writes += 1
            self.write_seconds += time.perf_counter() - start
        except (OperationalError, InterfaceError):
            # The database is down for a moment: the work goes on, the next report writes.
            log.warning("progress of job %s not written", self.job_id, exc_info=True)
            self._last_write, self.phase = now, phase
            return
        self._last_write, self.phase = now, phase
        if not held and lease is not None:
            raise JobLost(f"job {self.job_id} was taken from this worker (lease expired)")
        if cancel:
            raise JobCanceled(f"job {self.job_id} canceled by the client during {phase}")
