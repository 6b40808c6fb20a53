"""The progress callback the methods call; the service decides what to do with it."""

from __future__ import annotations

from collections.abc import Callable

# progress(phase, fraction_of_that_phase_done). It may raise to stop the work (cancellation).
Progress = Callable[[str, float], None]


def no_progress(phase: str, fraction: float) -> None:  # noqa: ARG001 - matches Progress
    return None
