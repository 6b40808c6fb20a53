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

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
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


# Versions whose importances a worker keeps; the least recently used beyond it are removed.
CACHE_VERSIONS = 32


def cache_key(config: SsdConfig, train_size: int) -> str:
    """What the global importances depend on besides the weights and the dataset."""
    return f"n{config.importance_images}-s{config.seed}-b{config.batch_size}-t{train_size}"


def load_cached(folder: Path, key: str) -> Importances | None:
    """Importances kept in ``folder`` (one model version on one dataset) under ``key``; a file
    that cannot be read is treated as absent and computed again."""
    path = folder / f"{key}.safetensors"
    try:
        found = safetensors.torch.load_file(str(path), device="cpu")
    except (OSError, safetensors.SafetensorError):
        return None
    os.utime(folder.parent)  # a use: the version stays in the cache longest
    return found


def save_cached(folder: Path, key: str, imp: Importances, keep: int = CACHE_VERSIONS) -> None:
    """Keep ``imp`` (written to a temporary name, then renamed, so a reader never sees half a
    file), then drop the least recently used versions beyond ``keep``."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.tmp"
    safetensors.torch.save_file({n: t.contiguous().cpu() for n, t in imp.items()}, str(tmp))
    tmp.replace(folder / f"{key}.safetensors")
    os.utime(folder.parent)
    versions = sorted(
        (p for p in folder.parent.parent.iterdir() if p.is_dir()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in versions[keep:]:
        shutil.rmtree(old, ignore_errors=True)


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
    key = cache_key(config, len(task.source))
    source = "given" if cached is not None else "computed"
    if cached is None and task.importance_cache is not None:
        cached = load_cached(task.importance_cache, key)
        source = "cached" if cached is not None else "computed"
    if cached is None:
        sample = _sample(everything, config.importance_images, config.seed)
        global_imp = importances(
            model, task.source, sample, task.spec, config.batch_size, task.device, first_half
        )
        result.samples_processed["importance"] = len(sample)
        if task.importance_cache is not None:
            save_cached(task.importance_cache, key, global_imp)
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
            "global_importance": source,
            "batchnorm_images": forward_only,
        }
    )
    result.forward_samples = forward_only
    return result
