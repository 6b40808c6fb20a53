"""Job recipes: everything one unlearning job computes, from stored weights to the measured
outcome, in plain torch. The service loads the spec and records the outcome; the worker hands
over a device and a progress callable."""

from __future__ import annotations

from pathlib import Path

import torch

from unlearning.jobs import classifier, i2i
from unlearning.jobs.common import (
    MEASUREMENT_PHASES,
    JobProgress,
    JobSpec,
    NoProgress,
    Outcome,
    UnlearningDiverged,
    forget_mask,
    forget_split,
)


def run(job: JobSpec, weights: Path, device: torch.device, report: JobProgress) -> Outcome:
    """The job's recipe for its model's task."""
    recipe = i2i.run if job.task == "image_to_image" else classifier.run
    return recipe(job, weights, device, report)


__all__ = [
    "MEASUREMENT_PHASES",
    "JobProgress",
    "JobSpec",
    "NoProgress",
    "Outcome",
    "UnlearningDiverged",
    "forget_mask",
    "forget_split",
    "run",
]
