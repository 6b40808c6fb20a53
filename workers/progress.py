"""Throttled progress reporting from a running job to the database, and cooperative cancel."""

from __future__ import annotations

import time
from collections.abc import Sequence

from app.db import session_scope
from app.jobs import service as jobs

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
    def __init__(self, job_id: str, interval_s: float, plan: Plan = ()) -> None:
        self.job_id = job_id
        self.interval_s = interval_s
        self.ranges = phase_ranges(plan)
        self._last_write = 0.0
        self._last_phase: str | None = None

    def set_plan(self, plan: Plan) -> None:
        self.ranges = phase_ranges(plan)

    def __call__(self, phase: str, fraction: float) -> None:
        now = time.monotonic()
        phase_changed = phase != self._last_phase
        if not phase_changed and now - self._last_write < self.interval_s:
            return
        lo, hi = self.ranges.get(phase, (0.0, 1.0))
        overall = lo + (hi - lo) * min(max(fraction, 0.0), 1.0)
        with session_scope() as session:
            cancel = jobs.report_progress(session, self.job_id, phase, overall)
        self._last_write, self._last_phase = now, phase
        if cancel:
            raise JobCanceled(f"job {self.job_id} canceled by the client during {phase}")
