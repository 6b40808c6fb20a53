"""Throttled progress reporting from a running job to the database, and cooperative cancel."""

from __future__ import annotations

import time

from app.db import session_scope
from app.jobs import service as jobs

# Share of the whole job that each phase covers, so ``progress`` rises steadily from 0 to 1.
PHASES: dict[str, tuple[float, float]] = {
    "noise": (0.00, 0.35),
    "impair": (0.35, 0.70),
    "repair": (0.70, 0.85),
    "evaluate": (0.85, 0.97),
    "save": (0.97, 1.00),
}


class JobCanceled(Exception):
    """The client asked to cancel the running job."""


class ProgressReporter:
    def __init__(self, job_id: str, interval_s: float) -> None:
        self.job_id = job_id
        self.interval_s = interval_s
        self._last_write = 0.0
        self._last_phase: str | None = None

    def __call__(self, phase: str, fraction: float) -> None:
        now = time.monotonic()
        phase_changed = phase != self._last_phase
        if not phase_changed and now - self._last_write < self.interval_s:
            return
        lo, hi = PHASES.get(phase, (0.0, 1.0))
        overall = lo + (hi - lo) * min(max(fraction, 0.0), 1.0)
        with session_scope() as session:
            cancel = jobs.report_progress(session, self.job_id, phase, overall)
        self._last_write, self._last_phase = now, phase
        if cancel:
            raise JobCanceled(f"job {self.job_id} canceled by the client during {phase}")
