"""What each method will spend, in sample passes, before it runs: the same units a job reports
(forward+backward passes; forward-only passes at a third), so a request's budget can be checked
before any work starts."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from unlearning.methods.common import FORWARD_SHARE
from unlearning.methods.distill import AutoConfig, DistillConfig
from unlearning.methods.i2i import I2IConfig
from unlearning.methods.reference import (
    FinetuneConfig,
    NegGradPlusConfig,
    RandomLabelConfig,
    RetrainConfig,
)
from unlearning.methods.salun import SalunConfig
from unlearning.methods.ssd import SsdConfig
from unlearning.methods.unsir import UnsirConfig


@dataclass(frozen=True)
class Sizes:
    """The request's data as counts: the training split, the forget set, the retain samples of
    each retain class, and how many classes are forgotten (0 for a sample request)."""

    train: int
    forget: int
    retain_by_class: tuple[int, ...]
    forget_classes: int = 0

    @property
    def retain(self) -> int:
        return sum(self.retain_by_class)


def sizes_of(train: int, forget: int, retain_targets: np.ndarray, forget_classes: int) -> Sizes:
    """Sizes from the labels of the retain samples (counted per class)."""
    by_class = np.bincount(np.asarray(retain_targets, dtype=np.int64))
    return Sizes(train, forget, tuple(int(n) for n in by_class if n), forget_classes)


def balanced_sizes(train: int, classes: int, forget_classes: int) -> Sizes:
    """Sizes of a class request from the split's counts alone, its classes taken as equal in
    size: for a cost estimate when the split itself is not read."""
    per_class = train // classes if classes else 0
    retain = tuple(per_class for _ in range(classes - forget_classes) if per_class)
    return Sizes(train, per_class * forget_classes, retain, forget_classes)


def unsir(c: UnsirConfig, s: Sizes) -> float:
    subset = sum(min(c.retain_per_class, n) for n in s.retain_by_class)
    noise = s.forget_classes * c.noise_steps * c.noise_batch
    classes = len(s.retain_by_class) + s.forget_classes
    per_class = c.noise_per_class(s.train / classes if classes else 0)
    impair = c.impair_epochs * (s.forget_classes * per_class + subset)
    # Extra repair epochs run only when the gate asks for them: counted at their most.
    repair = (c.repair_epochs + c.max_extra_repair_epochs) * subset
    return float(noise + impair + repair)


def salun(c: SalunConfig, s: Sizes) -> float:
    retain = s.retain
    if c.retain_per_class is not None:
        retain = sum(min(c.retain_per_class, n) for n in s.retain_by_class)
    # The stop rule may end it sooner; the estimate is what it may spend.
    return float(s.forget + c.epochs * (s.forget + retain))


def ssd(c: SsdConfig, s: Sizes) -> float:
    return (
        min(c.importance_images, s.train)
        + min(c.forget_images, s.forget)
        + FORWARD_SHARE * min(c.bn_images, s.retain)
    )


def budgeted(c: AutoConfig | DistillConfig, s: Sizes) -> float:
    """Methods that size themselves from their budget spend at most that budget."""
    return c.budget_epochs * s.train


def retain_epochs(c: RetrainConfig | FinetuneConfig, s: Sizes) -> float:
    return float(c.epochs * s.retain)


def random_label(c: RandomLabelConfig, s: Sizes) -> float:
    return float(c.epochs * (s.forget + s.retain))


def neggrad_plus(c: NegGradPlusConfig, s: Sizes) -> float:
    steps = math.ceil(s.retain / c.batch_size)
    return float(c.epochs * (s.retain + steps * min(c.forget_batch_size, s.forget)))


def i2i(c: I2IConfig, s: Sizes) -> float:
    """Resolved parameters (the API fills in the family's recipe before estimating)."""
    forget = s.forget
    if s.forget_classes:
        forget = min(s.forget, c.images_per_class * s.forget_classes)
    retain = min(s.retain, max(1, math.ceil(float(c.retain_ratio or 1.0) * forget)))
    half = c.batch_size // 2
    steps = max(1, math.ceil(max(forget, retain) / half)) * int(c.epochs or 1)
    return float(steps * 2 * half)
