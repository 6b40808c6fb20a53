"""Reference methods: retraining from scratch (the gold standard) and the usual baselines.

Defaults come from the code the methods doc cites (``../shared/docs/unlearning-methods.md`` s. 4):
fine-tuning and random labels follow the Selective Synaptic Dampening repository's strategies
(SGD, momentum 0.9, weight decay 5e-4; fine-tune 5 epochs at lr 0.02 on the retain set; random
labels 3 epochs at lr 1e-4 over the forget set relabelled with another class plus the retain set).
NegGrad+ follows SCRUB's formulation, ``beta * CE(retain) - (1 - beta) * CE(forget)`` over retain
batches paired with cycled forget batches. Retraining uses Adam, like ``unlearning.train``: set
its parameters to the recipe that trained the original model, or the comparison is unfair.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from unlearning.methods.common import (
    BATCH,
    LR,
    SEED,
    WEIGHT_DECAY,
    MethodResult,
    SgdConfig,
    UnlearningTask,
    check_bounds,
    labelled_batches,
)
from unlearning.train import descend, epoch_progress, train_classifier


@dataclass(frozen=True)
class RetrainConfig:
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_bounds(
            self,
            {"epochs": (1, 1_000), "batch_size": BATCH, "seed": SEED},
            {"lr": LR, "weight_decay": WEIGHT_DECAY},
        )


def retrain(task: UnlearningTask, config: RetrainConfig) -> MethodResult:
    """Train a freshly initialised model on the retain set only; its weights replace the model's."""
    if task.fresh_model is None:
        raise ValueError("retraining needs a way to build a freshly initialised model")
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    fresh = task.fresh_model()
    seen = train_classifier(
        fresh,
        task.source,
        task.retain_idx,
        task.spec,
        epochs=config.epochs,
        lr=config.lr,
        batch_size=config.batch_size,
        weight_decay=config.weight_decay,
        seed=config.seed,
        device=task.device,
        progress=task.progress,
        phase="retrain",
    )
    task.model.load_state_dict(fresh.state_dict())
    task.model.to(task.device)
    return MethodResult({"retrain": time.perf_counter() - start}, {"retrain": seen})


@dataclass(frozen=True)
class FinetuneConfig(SgdConfig):
    """The SSD repository's fine-tuning: 5 epochs at lr 0.02 (the base defaults)."""


def finetune(task: UnlearningTask, config: FinetuneConfig) -> MethodResult:
    """Keep training on the retain set only, relying on catastrophic forgetting."""
    labels = task.source.targets[task.retain_idx]
    return _sgd_epochs(task, "finetune", task.retain_idx, labels, config)


@dataclass(frozen=True)
class RandomLabelConfig(SgdConfig):
    """The SSD repository's amnesiac (random labels): 3 epochs at lr 1e-4."""

    epochs: int = 3
    lr: float = 1e-4


def random_label(task: UnlearningTask, config: RandomLabelConfig) -> MethodResult:
    """Train on the forget set relabelled with random *other* classes, mixed with the retain set."""
    rng = np.random.default_rng(config.seed)
    idx = np.concatenate([task.forget_idx, task.retain_idx])
    labels = np.concatenate(
        [
            other_labels(task.source.targets[task.forget_idx], task.num_classes, rng),
            task.source.targets[task.retain_idx],
        ]
    )
    return _sgd_epochs(task, "random_label", idx, labels, config)


def other_labels(true: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random label different from each true one."""
    shift = rng.integers(1, num_classes, size=len(true))
    return (true + shift) % num_classes


def _sgd_epochs(
    task: UnlearningTask,
    phase: str,
    idx: np.ndarray,
    labels: np.ndarray,
    config: SgdConfig,
) -> MethodResult:
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    task.model.to(task.device)
    opt = config.optimizer(task.model)
    seen = 0
    for epoch in range(config.epochs):
        batches = labelled_batches(task.source, idx, labels, task.spec, config.batch_size, gen)
        on_step = epoch_progress(task.progress, phase, epoch, config.epochs, len(idx))
        seen += descend(task.model, opt, batches, task.device, on_step)
    return MethodResult({phase: time.perf_counter() - start}, {phase: seen})


@dataclass(frozen=True)
class NegGradPlusConfig(SgdConfig):
    lr: float = 0.01
    beta: float = 0.99
    forget_batch_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bounds(self, {"forget_batch_size": BATCH}, {"beta": (0.0, 1.0, True)})


def neggrad_plus(task: UnlearningTask, config: NegGradPlusConfig) -> MethodResult:
    """Descend on retain batches while ascending on forget batches, weighted by ``beta``."""
    if len(task.forget_idx) == 0:
        raise ValueError("neggrad_plus needs forget samples")
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model, device, source = task.model.to(task.device), task.device, task.source
    opt = config.optimizer(model)
    retain_y, forget_y = source.targets[task.retain_idx], source.targets[task.forget_idx]
    model.train()
    seen = 0
    for epoch in range(config.epochs):
        retain = labelled_batches(
            source, task.retain_idx, retain_y, task.spec, config.batch_size, gen
        )
        # The forget set is usually the smaller one: it is cycled, reshuffled on each pass.
        forget = itertools.chain.from_iterable(
            labelled_batches(
                source, task.forget_idx, forget_y, task.spec, config.forget_batch_size, gen
            )
            for _ in itertools.count()
        )
        on_step = epoch_progress(
            task.progress, "neggrad_plus", epoch, config.epochs, len(task.retain_idx)
        )
        done = 0
        for (xr, yr), (xf, yf) in zip(retain, forget, strict=False):
            opt.zero_grad(set_to_none=True)
            loss = config.beta * F.cross_entropy(model(xr.to(device)), yr.to(device)) - (
                1 - config.beta
            ) * F.cross_entropy(model(xf.to(device)), yf.to(device))
            loss.backward()
            opt.step()
            done += len(yr)
            seen += len(yr) + len(yf)
            on_step(done)
    return MethodResult({"neggrad_plus": time.perf_counter() - start}, {"neggrad_plus": seen})
