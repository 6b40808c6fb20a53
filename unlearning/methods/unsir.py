"""UNSIR (Tarun et al., "Fast Yet Effective Machine Unlearning", TNNLS 2023).

Class-level, zero-glance unlearning in three phases:

1. *noise*: for each forget class c, learn a noise batch N_c that maximises the model's loss on
   label c: minimise ``-CE(f(N_c), c) + noise_l2 * mean_b ||N_c[b]||^2`` with Adam, weights fixed;
2. *impair*: one high-learning-rate epoch on every N_c (labelled c, repeated) plus a small retain
   subset;
3. *repair*: one epoch on the retain subset only.

Two bugs of the official notebook are fixed by default and can be reproduced on request:
the notebook labels all noise with class 0 (``label_fix=False`` reproduces it), and it learns the
noise with BatchNorm in train mode, which rewrites the running statistics on noise
(``noise_bn_mode="train"`` reproduces it). Forget-class training data is never read: the method
receives only the retain subset.

Two defaults make it safe on BatchNorm networks and on small data, and can be turned off to run
the notebook's recipe as it is: ``batchnorm="frozen"`` keeps BatchNorm's running statistics
through impair and repair (a high-learning-rate pass over noise and few retain images otherwise
replaces the statistics every later layer depends on), and ``size_to_data`` caps the noise
images of each class (``noise_batch x noise_repeats``) at the mean class size of the training
data, so the impair set never outweighs the data it stands for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from unlearning.data import ImageSource, InputSpec, sample_per_class
from unlearning.methods.common import (
    BATCH,
    EPOCHS,
    LR,
    SEED,
    MethodResult,
    UnlearningTask,
    check_bounds,
)
from unlearning.progress import Progress, no_progress
from unlearning.train import descend, epoch_progress

BatchFactory = Callable[[torch.Generator, int], Iterator[tuple[torch.Tensor, torch.Tensor]]]


MAX_NOISE_IMAGES_PER_CLASS = 2_000_000


@dataclass(frozen=True)
class UnsirConfig:
    """Defaults are the official notebook's values (methods doc, section 1.8)."""

    noise_batch: int = 256
    noise_steps: int = 40
    noise_lr: float = 0.1
    noise_l2: float = 0.1
    noise_repeats: int = 20
    retain_per_class: int = 1000
    impair_lr: float = 0.02
    impair_epochs: int = 1
    impair_batch_size: int = 256
    repair_lr: float = 0.01
    repair_epochs: int = 1
    repair_batch_size: int = 256
    noise_bn_mode: Literal["eval", "train"] = "eval"
    label_fix: bool = True
    # "train": BatchNorm statistics follow impair and repair batches, as in the notebook.
    batchnorm: Literal["frozen", "train"] = "frozen"
    # Cap each class's noise images at the training data's mean class size (fewer repeats).
    size_to_data: bool = True
    # Repair epochs the acceptance gate may add, one at a time, while retain accuracy is short.
    max_extra_repair_epochs: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        check_bounds(
            self,
            {
                "noise_batch": (1, 65_536),
                "noise_steps": (1, 10_000_000),
                "noise_repeats": (1, 10_000),
                "retain_per_class": (1, 10_000_000),
                "impair_epochs": (1, 1_000),
                "impair_batch_size": BATCH,
                "repair_epochs": EPOCHS,
                "repair_batch_size": BATCH,
                "max_extra_repair_epochs": (0, 100),
                "seed": SEED,
            },
            {
                "noise_lr": (0.0, 100.0, False),
                "noise_l2": (0.0, 1e6, True),
                "impair_lr": LR,
                "repair_lr": LR,
            },
        )
        if self.noise_batch * self.noise_repeats > MAX_NOISE_IMAGES_PER_CLASS:
            raise ValueError(
                f"noise_batch x noise_repeats must be at most {MAX_NOISE_IMAGES_PER_CLASS}"
            )
        if self.noise_bn_mode not in ("eval", "train"):
            raise ValueError("noise_bn_mode must be 'eval' or 'train'")
        if self.batchnorm not in ("frozen", "train"):
            raise ValueError("batchnorm must be 'frozen' or 'train'")

    def noise_per_class(self, mean_class_size: float) -> int:
        """Noise images per forget class in the impair set."""
        full = self.noise_batch * self.noise_repeats
        if not self.size_to_data:
            return full
        return max(1, min(full, int(mean_class_size)))

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class RetainSubset:
    """The only training data UNSIR sees: chosen retain-class samples of a source."""

    source: ImageSource
    indices: np.ndarray

    def labels(self) -> np.ndarray:
        return self.source.targets[self.indices]


@dataclass
class UnsirResult(MethodResult):
    noise_loss: dict[int, float] = field(default_factory=dict)


def unsir(
    model: nn.Module,
    forget_classes: Sequence[int],
    retain: RetainSubset,
    spec: InputSpec,
    config: UnsirConfig,
    *,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> UnsirResult:
    """Unlearn ``forget_classes`` from ``model`` in place; returns timings and sample counts."""
    device = device or torch.device("cpu")
    forget = [int(c) for c in forget_classes]
    if not forget:
        raise ValueError("no forget classes given")
    if np.isin(retain.labels(), forget).any():
        raise ValueError("the retain subset contains forget-class samples")
    torch.manual_seed(config.seed)
    model.to(device)
    result = UnsirResult()

    start = time.perf_counter()
    noise = learn_noise(model, forget, spec, config, device, progress, result)
    result.phase_seconds["noise"] = time.perf_counter() - start
    result.samples_processed["noise"] = len(forget) * config.noise_steps * config.noise_batch

    start = time.perf_counter()
    result.samples_processed["impair"] = _impair(
        model, noise, retain, spec, config, device, progress
    )
    result.phase_seconds["impair"] = time.perf_counter() - start

    start = time.perf_counter()
    result.samples_processed["repair"] = _repair(model, retain, spec, config, device, progress)
    result.phase_seconds["repair"] = time.perf_counter() - start
    return result


def learn_noise(
    model: nn.Module,
    forget: list[int],
    spec: InputSpec,
    config: UnsirConfig,
    device: torch.device,
    progress: Progress,
    result: UnsirResult,
) -> dict[int, torch.Tensor]:
    """One error-maximising noise batch per forget class, learned with the weights frozen."""
    # Eval mode keeps BatchNorm's running statistics untouched by noise (the notebook's bug).
    model.train(config.noise_bn_mode == "train")
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(config.seed)
    noise: dict[int, torch.Tensor] = {}
    total_steps = len(forget) * config.noise_steps
    try:
        for k, cls in enumerate(forget):
            n = torch.randn((config.noise_batch, *spec.shape), generator=gen).to(device)
            n.requires_grad_(True)
            opt = torch.optim.Adam([n], lr=config.noise_lr)
            target = torch.full((config.noise_batch,), cls, dtype=torch.long, device=device)
            for step in range(config.noise_steps):
                opt.zero_grad(set_to_none=True)
                penalty = n.pow(2).flatten(1).sum(dim=1).mean()
                loss = -F.cross_entropy(model(n), target) + config.noise_l2 * penalty
                loss.backward()
                opt.step()
                progress("noise", (k * config.noise_steps + step + 1) / total_steps)
            result.noise_loss[cls] = float(loss.detach())
            noise[cls] = n.detach()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return noise


def _impair(
    model: nn.Module,
    noise: dict[int, torch.Tensor],
    retain: RetainSubset,
    spec: InputSpec,
    config: UnsirConfig,
    device: torch.device,
    progress: Progress,
) -> int:
    """High-LR epoch(s) on noise (labelled with its own class) mixed with the retain subset."""
    mean_class = len(retain.source) / max(len(np.unique(retain.source.targets)), 1)
    noise_x, noise_y = noise_dataset(noise, config, config.noise_per_class(mean_class))
    opt = torch.optim.Adam(model.parameters(), lr=config.impair_lr)
    gen = torch.Generator().manual_seed(config.seed + 1)
    return _train_epochs(
        model,
        opt,
        config.impair_epochs,
        config.impair_batch_size,
        gen,
        lambda g, bs: _mixed_batches(noise_x, noise_y, retain, spec, bs, g),
        len(noise_x) + len(retain.indices),
        device,
        "impair",
        progress,
        config.batchnorm == "frozen",
    )


def noise_dataset(
    noise: dict[int, torch.Tensor], config: UnsirConfig, per_class: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class's noise batch repeated ``noise_repeats`` times, labelled with its own class,
    and cut to ``per_class`` images when given."""
    xs, ys = [], []
    for cls, n in noise.items():
        rows = n.cpu().repeat(config.noise_repeats, 1, 1, 1)[:per_class]
        xs.append(rows)
        # label_fix=False reproduces the official notebook, which labels every noise as 0.
        ys.append(torch.full((len(rows),), cls if config.label_fix else 0))
    return torch.cat(xs), torch.cat(ys).long()


def _repair(
    model: nn.Module,
    retain: RetainSubset,
    spec: InputSpec,
    config: UnsirConfig,
    device: torch.device,
    progress: Progress,
) -> int:
    if config.repair_epochs == 0:
        progress("repair", 1.0)
        return 0
    opt = torch.optim.Adam(model.parameters(), lr=config.repair_lr)
    gen = torch.Generator().manual_seed(config.seed + 2)
    empty_x = torch.empty((0, *spec.shape))
    empty_y = torch.empty(0, dtype=torch.long)
    return _train_epochs(
        model,
        opt,
        config.repair_epochs,
        config.repair_batch_size,
        gen,
        lambda g, bs: _mixed_batches(empty_x, empty_y, retain, spec, bs, g),
        len(retain.indices),
        device,
        "repair",
        progress,
        config.batchnorm == "frozen",
    )


def _train_epochs(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    gen: torch.Generator,
    batches: BatchFactory,
    epoch_size: int,
    device: torch.device,
    phase: str,
    progress: Progress,
    frozen_bn: bool,
) -> int:
    seen = 0
    for epoch in range(epochs):
        on_step = epoch_progress(progress, phase, epoch, epochs, epoch_size)
        seen += descend(
            model, opt, batches(gen, batch_size), device, on_step, freeze_batchnorm=frozen_bn
        )
    return seen


def _mixed_batches(
    noise_x: torch.Tensor,
    noise_y: torch.Tensor,
    retain: RetainSubset,
    spec: InputSpec,
    batch_size: int,
    gen: torch.Generator,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches over noise rows and retain samples, as one dataset."""
    n_noise = len(noise_x)
    order = torch.randperm(n_noise + len(retain.indices), generator=gen)
    for start in range(0, len(order), batch_size):
        pos = order[start : start + batch_size]
        from_noise = pos[pos < n_noise]
        from_retain = retain.indices[(pos[pos >= n_noise] - n_noise).numpy()]
        xs, ys = [noise_x[from_noise]], [noise_y[from_noise]]
        if len(from_retain):
            xs.append(spec.prepare(retain.source.images(from_retain)))
            ys.append(torch.as_tensor(retain.source.targets[from_retain]))
        yield torch.cat(xs), torch.cat(ys)


def retain_subset(task: UnlearningTask, config: UnsirConfig) -> RetainSubset:
    """``retain_per_class`` seeded random samples of every retain class."""
    if not task.forget_classes:
        raise ValueError("UNSIR forgets whole classes: name forget classes")
    retain_classes = [c for c in range(task.num_classes) if c not in task.forget_classes]
    idx = sample_per_class(
        task.source.targets, retain_classes, config.retain_per_class, config.seed
    )
    return RetainSubset(task.source, idx)


def run_unsir(task: UnlearningTask, config: UnsirConfig) -> MethodResult:
    retain = retain_subset(task, config)
    result = unsir(
        task.model,
        task.forget_classes or [],
        retain,
        task.spec,
        config,
        device=task.device,
        progress=task.progress,
    )
    result.details["retain_subset_size"] = len(retain.indices)
    result.details["noise_final_loss"] = {str(c): v for c, v in result.noise_loss.items()}
    return result


def extra_repair(task: UnlearningTask, config: UnsirConfig, round_: int) -> int:
    """One more repair epoch on the same retain subset, reshuffled; returns samples processed."""
    retain = retain_subset(task, config)
    once = replace(config, repair_epochs=1, seed=(config.seed + 1000 * (round_ + 1)) % 2**32)
    return _repair(task.model, retain, task.spec, once, task.device, task.progress)
