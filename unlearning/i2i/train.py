"""Training an inpainter from scratch, to build the original model in demos, tests and
benchmarks: masked reconstruction loss under the same random masks the method uses."""

from __future__ import annotations

import time

import numpy as np
import torch

from unlearning.data import ImageSource, InputSpec
from unlearning.i2i.architectures import I2IModel
from unlearning.i2i.masks import Transform
from unlearning.progress import Progress, no_progress


def train_inpainter(
    model: I2IModel,
    source: ImageSource,
    indices: np.ndarray,
    spec: InputSpec,
    transform: Transform,
    *,
    epochs: int,
    lr: float = 2e-3,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> dict[str, float]:
    """Adam on the network's own training loss (``I2IModel.training_loss``: the squared error
    of the hidden pixels for inpainters); returns samples, seconds and last loss."""
    device = device or torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    h, w = spec.shape[1:]
    start, seen, last = time.perf_counter(), 0, float("nan")
    for epoch in range(epochs):
        order = indices[torch.randperm(len(indices), generator=gen).numpy()]
        for s in range(0, len(order), batch_size):
            x = spec.prepare(source.images(order[s : s + batch_size])).to(device)
            mask = model.training_mask(transform, len(x), h, w, gen).to(device)
            loss = model.training_loss(x, mask, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(x)
            last = float(loss.detach())
        progress("train", (epoch + 1) / epochs)
    model.eval()
    return {"samples": seen, "seconds": time.perf_counter() - start, "loss": last}
