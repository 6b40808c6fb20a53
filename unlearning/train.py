"""Plain supervised training, used to build the original model in demos, tests and benchmarks."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from unlearning.data import ImageSource, InputSpec, iterate
from unlearning.progress import Progress, no_progress


def descend(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    on_step: Callable[[int], None] | None = None,
    grad_mask: dict[str, torch.Tensor] | None = None,
    freeze_batchnorm: bool = False,
) -> int:
    """One pass of cross-entropy descent in train mode; ``grad_mask`` zeroes the gradient of
    unmasked weights (and of every weight it does not name); ``freeze_batchnorm`` keeps
    BatchNorm layers in eval mode, so their running statistics stay as they are. Returns the
    samples processed."""
    model.train()
    if freeze_batchnorm:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
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
        if on_step is not None:
            on_step(seen)
    return seen


def epoch_progress(
    progress: Progress, phase: str, epoch: int, epochs: int, epoch_size: int
) -> Callable[[int], None]:
    """A step callback that reports the fraction of all epochs done."""
    total = max(epochs * epoch_size, 1)
    return lambda seen: progress(phase, (epoch * epoch_size + seen) / total)


def train_classifier(
    model: nn.Module,
    source: ImageSource,
    indices: np.ndarray,
    spec: InputSpec,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: torch.device | None = None,
    progress: Progress = no_progress,
    phase: str = "train",
) -> int:
    """Adam + cross-entropy for ``epochs``; returns the number of samples processed."""
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    seen = 0
    for epoch in range(epochs):
        batches = iterate(source, indices, spec, batch_size, generator=gen)
        on_step = epoch_progress(progress, phase, epoch, epochs, len(indices))
        seen += descend(model, opt, batches, device, on_step)
    return seen
