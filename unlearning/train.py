"""Plain supervised training, used to build the original model in demos, tests and benchmarks."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from unlearning.data import ImageSource, InputSpec, iterate
from unlearning.progress import Progress, no_progress


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
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    seen, total = 0, max(epochs * len(indices), 1)
    for _ in range(epochs):
        for x, y in iterate(source, indices, spec, batch_size, generator=gen):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x.to(device)), y.to(device)).backward()
            opt.step()
            seen += len(y)
            progress(phase, seen / total)
    return seen
