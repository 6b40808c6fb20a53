"""What every unlearning method shares: the task it is given, its result, parameter bounds and
the training loops the reference methods are built from."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from unlearning.data import ImageSource, InputSpec
from unlearning.progress import Progress, no_progress

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


@dataclass
class MethodResult:
    phase_seconds: dict[str, float] = field(default_factory=dict)
    # Samples that went through a forward and backward pass, per phase.
    samples_processed: dict[str, int] = field(default_factory=dict)
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


def sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def descend(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batches: Batches,
    device: torch.device,
    on_step: Callable[[int], None],
    grad_mask: dict[str, torch.Tensor] | None = None,
) -> int:
    """One pass of cross-entropy descent; ``grad_mask`` zeroes the gradient of unmasked weights.
    Returns the samples processed."""
    model.train()
    seen = 0
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x.to(device)), y.to(device)).backward()
        if grad_mask is not None:
            for name, p in model.named_parameters():
                if p.grad is not None:
                    p.grad.mul_(grad_mask[name]) if name in grad_mask else p.grad.zero_()
        opt.step()
        seen += len(y)
        on_step(seen)
    return seen


def epoch_progress(
    progress: Progress, phase: str, epoch: int, epochs: int, epoch_size: int
) -> Callable[[int], None]:
    """A step callback that reports the fraction of all epochs done."""
    total = max(epochs * epoch_size, 1)
    return lambda seen: progress(phase, (epoch * epoch_size + seen) / total)
