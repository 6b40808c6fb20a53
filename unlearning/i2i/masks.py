"""The transform T of the method: which pixels are hidden, and the noise images.

A mask is a float tensor (B, 1, H, W), 1 where a pixel is hidden. Evaluation masks are fixed
(the registered transform, the same for every image); training masks are random, as in the
official code (random token masking for MAGE, random boxes and strokes for Palette).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from unlearning.data import InputSpec

MaskKind = Literal["center_square", "outpaint", "random"]
NoiseType = Literal["normal_batchstats", "uniform", "constant", "std_normal"]
NOISE_TYPES: tuple[str, ...] = ("normal_batchstats", "uniform", "constant", "std_normal")


@dataclass(frozen=True)
class Transform:
    """The registered completion task.

    - ``center_square``: inpaint a centred square whose side is ``size`` of the shorter side
      (MAGE evaluates 4/16 and 8/16; Palette 1/2);
    - ``outpaint``: complete a border ``size`` of the side wide on all four sides;
    - ``random``: inpaint ``size`` of the cells of a ``cell``-pixel grid, chosen at random (with a
      fixed seed for evaluation).
    """

    kind: MaskKind = "center_square"
    size: float = 0.5
    cell: int = 4

    def __post_init__(self) -> None:
        if self.kind not in ("center_square", "outpaint", "random"):
            raise ValueError(f"unknown transform kind {self.kind!r}")
        upper = 0.5 if self.kind == "outpaint" else 1.0
        if not 0.0 < self.size < upper:
            raise ValueError(f"{self.kind} size must be in (0, {upper}), got {self.size}")
        if not 1 <= self.cell <= 4096:
            raise ValueError(f"cell must be between 1 and 4096 pixels, got {self.cell}")


def center_square(n: int, h: int, w: int, size: float) -> torch.Tensor:
    side = max(1, round(size * min(h, w)))
    top, left = (h - side) // 2, (w - side) // 2
    mask = torch.zeros(n, 1, h, w)
    mask[:, :, top : top + side, left : left + side] = 1.0
    return mask


def outpaint(n: int, h: int, w: int, size: float) -> torch.Tensor:
    bh, bw = max(1, round(size * h)), max(1, round(size * w))
    mask = torch.ones(n, 1, h, w)
    mask[:, :, bh : h - bh, bw : w - bw] = 0.0
    return mask


def random_cells(
    n: int, h: int, w: int, ratios: torch.Tensor, cell: int, gen: torch.Generator
) -> torch.Tensor:
    """Per image, hide a ``ratios[i]`` share of the cells of a ``cell``-pixel grid."""
    gh, gw = math.ceil(h / cell), math.ceil(w / cell)
    scores = torch.rand(n, gh * gw, generator=gen)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    keep_hidden = ranks < (ratios.view(-1, 1) * gh * gw).round().clamp(min=1)
    grid = keep_hidden.float().view(n, 1, gh, gw)
    full = grid.repeat_interleave(cell, dim=2).repeat_interleave(cell, dim=3)
    return full[:, :, :h, :w].contiguous()


def eval_mask(t: Transform, n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """The fixed evaluation mask of the registered transform, for ``n`` images."""
    if t.kind == "center_square":
        return center_square(n, h, w, t.size)
    if t.kind == "outpaint":
        return outpaint(n, h, w, t.size)
    gen = torch.Generator().manual_seed(seed)
    return random_cells(n, h, w, torch.full((n,), t.size), t.cell, gen)


def hidden_share(t: Transform, input_shape: tuple[int, int, int] | list[int]) -> float:
    """The share of pixels the evaluation mask hides on images of ``input_shape``."""
    return float(eval_mask(t, 1, int(input_shape[1]), int(input_shape[2])).mean())


def train_mask(t: Transform, n: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """A random T per image: half get the registered shape at a jittered size (x0.75 to x1.25),
    half random cells at MAGE's masking ratio (truncated normal, mean 0.55, sd 0.25, in
    [0.5, 1.0]). The method needs masks that cover what evaluation hides, and more."""
    shaped = torch.rand(n, generator=gen) < 0.5
    jitter = 0.75 + 0.5 * torch.rand(n, generator=gen)
    upper = 0.49 if t.kind == "outpaint" else 0.95
    sizes = (t.size * jitter).clamp(0.05, upper)
    if t.kind == "random":
        shaped_masks = random_cells(n, h, w, sizes, t.cell, gen)
    else:
        draw = center_square if t.kind == "center_square" else outpaint
        shaped_masks = torch.cat([draw(1, h, w, float(s)) for s in sizes])
    ratios = (0.55 + 0.25 * torch.randn(n, generator=gen)).clamp(0.5, 1.0)
    cell = max(1, min(t.cell, h // 2, w // 2))
    cell_masks = random_cells(n, h, w, ratios, cell, gen)
    return torch.where(shaped.view(-1, 1, 1, 1), shaped_masks, cell_masks)


def noise_input(
    pixels: torch.Tensor, count: int, kind: str, spec: InputSpec, gen: torch.Generator
) -> torch.Tensor:
    """Model input for ``count`` noise images, the targets the forget set is pulled toward.

    ``pixels`` is the batch as the model sees it (its size and channels), un-normalised to
    [0, 1]. ``normal_batchstats`` (the default, MAGE's ``normal``): Gaussian with the scalar
    mean and std of the whole batch, clamped to [0, 1]; ``uniform``: U[0, 1]; ``constant``: the
    batch mean everywhere; ``std_normal``: N(0, 1) in the model's normalised input space.
    """
    shape = (count, *pixels.shape[1:])
    if kind == "std_normal":
        return torch.randn(shape, generator=gen)
    if kind == "normal_batchstats":
        mean, std = pixels.mean(), pixels.std()
        noise = (torch.randn(shape, generator=gen) * std + mean).clamp(0.0, 1.0)
    elif kind == "uniform":
        noise = torch.rand(shape, generator=gen)
    elif kind == "constant":
        noise = torch.full(shape, float(pixels.mean()))
    else:
        raise ValueError(f"unknown noise type {kind!r}; known: {NOISE_TYPES}")
    return spec.prepare(noise)  # the shape already fits: this only normalises
