"""Selective Synaptic Dampening (Foster et al., "Fast Machine Unlearning Without Retraining
Through Selective Synaptic Dampening", AAAI 2024), with BatchNorm statistics re-estimated.

No training: the importance of each weight is the mean squared gradient of the loss, over a
sample of the training data (global) and over the forget set. Weights far more important to the
forget set than to the data as a whole (``forget > alpha * global``) are scaled down by
``min(1, dampening * global / forget)``. On BatchNorm networks the running statistics the
dampened weights feed are then re-estimated on retain images, forward passes only, so the
layers after them see the activations they now produce.

The global importance depends only on the model version and the dataset, so the service may
compute it once per version and pass it in (``importances``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from unlearning.data import ImageSource, InputSpec
from unlearning.methods.common import BATCH, SEED, MethodResult, UnlearningTask, check_bounds
from unlearning.progress import Progress

Importances = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SsdConfig:
    """``alpha`` and ``dampening`` (the paper's lambda) are the official repository's CIFAR
    values; the sample sizes bound the work whatever the dataset's size."""

    alpha: float = 10.0
    dampening: float = 1.0
    # Training images the global importance is estimated on (fewer when the data has fewer).
    importance_images: int = 2_000
    # Forget images the forget importance is estimated on.
    forget_images: int = 1_000
    # Retain images BatchNorm statistics are re-estimated on; 0 keeps the original statistics.
    bn_images: int = 2_000
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_bounds(
            self,
            {
                "importance_images": (1, 10_000_000),
                "forget_images": (1, 10_000_000),
                "bn_images": (0, 10_000_000),
                "batch_size": BATCH,
                "seed": SEED,
            },
            {"alpha": (0.0, 1e6, False), "dampening": (0.0, 1e6, False)},
        )


def importances(
    model: nn.Module,
    source: ImageSource,
    idx: np.ndarray,
    spec: InputSpec,
    batch_size: int,
    device: torch.device,
    progress: Progress,
) -> Importances:
    """Mean squared gradient of the cross-entropy per parameter, over ``source[idx]`` in
    batches (the official code's estimator), with the model in eval mode so that BatchNorm
    statistics do not change."""
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    batches = 0
    for start in range(0, len(idx), batch_size):
        chunk = idx[start : start + batch_size]
        x = spec.prepare(source.images(chunk)).to(device)
        y = torch.as_tensor(source.targets[chunk]).long().to(device)
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        for n, p in params.items():
            if p.grad is not None:
                total[n] += p.grad.detach().pow(2)
        batches += 1
        progress("importance", min(start + batch_size, len(idx)) / len(idx))
    model.zero_grad(set_to_none=True)
    return {n: t / max(batches, 1) for n, t in total.items()}


def dampen(
    model: nn.Module, global_imp: Importances, forget_imp: Importances, config: SsdConfig
) -> dict[str, int]:
    """Scale down the weights specialised to the forget set; returns how many per tensor."""
    changed: dict[str, int] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name not in forget_imp or name not in global_imp:
                continue
            g, f = global_imp[name], forget_imp[name]
            selected = f > config.alpha * g
            if not bool(selected.any()):
                continue
            beta = (config.dampening * g / f.clamp_min(1e-30)).clamp(max=1.0)
            p[selected] = p[selected] * beta[selected]
            changed[name] = int(selected.sum())
    return changed


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def reestimate_batchnorm(
    model: nn.Module,
    batches: Iterator[torch.Tensor],
    device: torch.device,
) -> int:
    """Running statistics recomputed as a plain average over ``batches`` (no gradients);
    returns the images seen."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average, not an exponential one
    model.train()
    seen = 0
    try:
        with torch.no_grad():
            for x in batches:
                model(x.to(device))
                seen += len(x)
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        model.eval()
    return seen


def _sample(idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(idx) <= n:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, size=n, replace=False))


def _image_batches(
    source: ImageSource, idx: np.ndarray, spec: InputSpec, batch_size: int
) -> Iterator[torch.Tensor]:
    for start in range(0, len(idx), batch_size):
        yield spec.prepare(source.images(idx[start : start + batch_size]))


def run_ssd(
    task: UnlearningTask, config: SsdConfig, cached: Importances | None = None
) -> MethodResult:
    """Dampen ``task.model`` in place. ``cached``: the global importances of this very model
    version and dataset, when the service kept them."""
    if len(task.forget_idx) == 0:
        raise ValueError("the forget set is empty")
    model = task.model.to(task.device)
    result = MethodResult()
    everything = np.concatenate([task.retain_idx, task.forget_idx])

    def first_half(phase: str, f: float) -> None:
        task.progress(phase, f / 2)

    def second_half(phase: str, f: float) -> None:
        task.progress(phase, 0.5 + f / 2)

    start = time.perf_counter()
    if cached is None:
        sample = _sample(everything, config.importance_images, config.seed)
        global_imp = importances(
            model, task.source, sample, task.spec, config.batch_size, task.device, first_half
        )
        result.samples_processed["importance"] = len(sample)
    else:
        global_imp = cached
        first_half("importance", 1.0)
    forget = _sample(task.forget_idx, config.forget_images, config.seed + 1)
    forget_imp = importances(
        model, task.source, forget, task.spec, config.batch_size, task.device, second_half
    )
    result.samples_processed["forget_importance"] = len(forget)
    changed = dampen(model, global_imp, forget_imp, config)
    result.phase_seconds["importance"] = time.perf_counter() - start

    start = time.perf_counter()
    forward_only = 0
    if config.bn_images and has_batchnorm(model):
        retain = _sample(task.retain_idx, config.bn_images, config.seed + 2)
        forward_only = reestimate_batchnorm(
            model, _image_batches(task.source, retain, task.spec, config.batch_size), task.device
        )
    task.progress("batchnorm", 1.0)
    result.phase_seconds["batchnorm"] = time.perf_counter() - start

    result.details.update(
        {
            "dampened_weights": sum(changed.values()),
            "dampened_tensors": len(changed),
            "total_weights": sum(p.numel() for p in model.parameters()),
            "global_importance": "cached" if cached is not None else "computed",
            "batchnorm_images": forward_only,
        }
    )
    result.forward_samples = forward_only
    return result
