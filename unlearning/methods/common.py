"""What every unlearning method shares: the task it is given, its result, parameter bounds and
the training loops the reference methods are built from."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unlearning.data import ImageSource, InputSpec
from unlearning.progress import Progress, no_progress

# A forward pass costs about a third of a forward and backward pass: the unit every job reports.
FORWARD_SHARE = 1 / 3

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class UnlearningTask:
    """The model to change in place and the data a method may read.

    ``forget_idx`` and ``retain_idx`` index ``source`` (the training split). For a class request
    the forget set is every training sample of ``forget_classes``; for a sample request it is the
    named samples and ``forget_classes`` is None.
    """

    model: nn.Module
    source: ImageSource
    forget_idx: np.ndarray
    retain_idx: np.ndarray
    forget_classes: list[int] | None
    num_classes: int
    spec: InputSpec
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: Progress = no_progress
    # Builds a freshly initialised model of the same architecture (retraining needs it).
    fresh_model: Callable[[], nn.Module] | None = None
    # The forget samples' membership against held-out data, measured on the model now:
    # (member-rate gap, samples passed forward). Methods that read the forget set stop once it
    # looks like unseen data, since forgetting past that is itself a sign of the deletion.
    member_gap: Callable[[nn.Module], tuple[float | None, int]] | None = None
    # The job's acceptance gate applied to the model now, without a retrained reference: (the
    # failed checks, samples passed forward). Methods that escalate stop at the first pass.
    accept: Callable[[nn.Module], tuple[list[dict[str, Any]], int]] | None = None
    # Where importances of this model version on this dataset are kept between jobs (SSD).
    importance_cache: Path | None = None


@dataclass
class MethodResult:
    phase_seconds: dict[str, float] = field(default_factory=dict)
    # Samples that went through a forward and backward pass, per phase.
    samples_processed: dict[str, int] = field(default_factory=dict)
    # Samples that went through a forward pass only (no gradient), all phases together.
    forward_samples: int = 0
    # Forward-only samples of checks the method made on held-out data (a stop rule): reported
    # with the job's measurements, not as method work.
    check_samples: int = 0
    # The method's last act was ``task.accept`` on the model it hands back: the job may reuse
    # that measurement instead of measuring the same weights again.
    final_checked: bool = False
    details: dict[str, object] = field(default_factory=dict)


def check_bounds(
    config: object,
    ints: dict[str, tuple[int, int]],
    floats: dict[str, tuple[float, float, bool]],
) -> None:
    """Refuse values outside ``[low, high]`` (floats: ``(low, high]`` unless low is allowed).

    Bounds keep a request from exhausting a worker or feeding NaN to an optimiser; NaN fails every
    comparison, so it is refused too.
    """
    for name, (low, high) in ints.items():
        value = getattr(config, name)
        if not low <= value <= high:
            raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    for name, (lo, hi, lo_ok) in floats.items():
        number = float(getattr(config, name))
        if not ((lo < number or (lo_ok and number == lo)) and number <= hi):
            bracket = "[" if lo_ok else "("
            raise ValueError(f"{name} must be in {bracket}{lo}, {hi}], got {number}")


# Bounds shared by the training-based methods.
EPOCHS = (0, 1_000)
BATCH = (1, 65_536)
SEED = (0, 2**32 - 1)
LR = (0.0, 10.0, False)
MOMENTUM = (0.0, 1.0, True)
WEIGHT_DECAY = (0.0, 1.0, True)


def labelled_batches(
    source: ImageSource,
    idx: np.ndarray,
    labels: np.ndarray,
    spec: InputSpec,
    batch_size: int,
    gen: torch.Generator,
) -> Batches:
    """Shuffled batches of ``source[idx]`` with the given labels (which may differ from the
    source's own, e.g. random labels)."""
    order = torch.randperm(len(idx), generator=gen).numpy()
    for start in range(0, len(order), batch_size):
        pos = order[start : start + batch_size]
        yield spec.prepare(source.images(idx[pos])), torch.as_tensor(labels[pos]).long()


@dataclass(frozen=True)
class SgdConfig:
    """Parameters shared by the SGD-trained methods (momentum and decay as in the SSD and SalUn
    code); each method overrides the defaults it takes from its own source."""

    epochs: int = 5
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        check_bounds(
            self,
            {"epochs": (1, 1_000), "batch_size": BATCH, "seed": SEED},
            {"lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
        )

    def optimizer(self, model: nn.Module) -> torch.optim.SGD:
        return torch.optim.SGD(
            model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
