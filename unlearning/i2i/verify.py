"""I2I verification: how well a model completes held-out retain and forget images under the
fixed evaluation mask, before and after unlearning, and a PNG grid for people to look at.

Per group (retain, forget), on the completed region against the ground truth in [0, 1] pixels:
``mse``, ``psnr`` (dB) and ``ssim`` (the SSIM map averaged over hidden pixels); the cosine
similarity of the model's encoder embedding to the original encoder's; and ``fd_random``, the
Frechet distance between completions and originals in the features of a fixed, seeded, randomly
initialised convolutional network. The paper's FID needs Inception weights, which a server with no
internet cannot download; random-feature distances rank generators consistently (Naeem et al.,
2020) but their scale is their own: compare them within this service, never with published FIDs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy import linalg
from torch import nn
from torch.nn import functional as F

from unlearning.data import ImageSource, InputSpec
from unlearning.i2i.architectures import I2IModel
from unlearning.i2i.masks import Transform, eval_mask

GROUP_CAP = 256  # held-out images measured per group; more adds time, not information
GRID_IMAGES = 6  # images per group in the PNG
EVAL_NOISE_SEED = 1234


@dataclass(frozen=True)
class Group:
    source: ImageSource
    idx: np.ndarray


@dataclass(frozen=True)
class EvalSets:
    retain: Group
    forget: Group

    def groups(self) -> dict[str, Group]:
        return {"retain": self.retain, "forget": self.forget}


def _capped(idx: np.ndarray, cap: int, seed: int) -> np.ndarray:
    if len(idx) <= cap:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, size=cap, replace=False))


def eval_sets(
    train: ImageSource,
    test: ImageSource,
    forget_idx: np.ndarray,
    forget_classes: list[int] | None,
    cap: int = GROUP_CAP,
    seed: int = 0,
) -> EvalSets:
    """Held-out images of the forget classes and of the other classes. A sample request has no
    held-out forget images: the forgotten training samples themselves are measured (the model
    must no longer reconstruct *them*), beside held-out retain images."""
    if forget_classes is not None:
        held = np.isin(test.targets, forget_classes)
        forget = Group(test, _capped(np.flatnonzero(held), cap, seed))
        return EvalSets(Group(test, _capped(np.flatnonzero(~held), cap, seed)), forget)
    retain = Group(test, _capped(np.arange(len(test)), cap, seed))
    return EvalSets(retain, Group(train, _capped(forget_idx, cap, seed)))


def to_pixels(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * std + mean).clamp(0.0, 1.0)


@dataclass
class Completions:
    truth: torch.Tensor  # [0, 1] pixels, on the CPU
    completed: torch.Tensor
    mask: torch.Tensor
    embedding: torch.Tensor  # every feature level, flattened and concatenated per image


@torch.no_grad()
def run_completions(
    model: I2IModel,
    group: Group,
    spec: InputSpec,
    transform: Transform,
    device: torch.device,
    batch_size: int = 256,
) -> Completions:
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {"truth": [], "completed": [], "mask": [], "emb": []}
    h, w = spec.shape[1:]
    for start in range(0, len(group.idx), batch_size):
        x = spec.prepare(group.source.images(group.idx[start : start + batch_size])).to(device)
        mask = measured_mask(model, eval_mask(transform, len(x), h, w)).to(device)
        # Seeded per batch: the same noise before and after unlearning, and on every run.
        gen = torch.Generator().manual_seed(EVAL_NOISE_SEED + start)
        features = model.encode(x, mask, model.evaluation_condition(len(x), gen))
        out = x * (1 - mask) + model.complete(x, mask, gen) * mask
        parts["truth"].append(to_pixels(x, spec).cpu())
        parts["completed"].append(to_pixels(out, spec).cpu())
        parts["mask"].append(mask.cpu())
        parts["emb"].append(torch.cat([f.flatten(1).float() for f in features], dim=1).cpu())
    if not parts["truth"]:
        empty = torch.empty(0)
        return Completions(empty, empty, empty, empty)
    return Completions(*(torch.cat(parts[k]) for k in ("truth", "completed", "mask", "emb")))


def measured_mask(model: I2IModel, mask: torch.Tensor) -> torch.Tensor:
    """The pixels measured: those the transform hides, or every pixel of an autoencoder's
    reconstruction (its encoder sees the whole image)."""
    return torch.ones_like(mask) if model.reconstructs else mask


def region_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image: mean squared error over the hidden pixels (all channels)."""
    err = ((a - b) ** 2 * mask).sum(dim=(1, 2, 3))
    return err / (mask.sum(dim=(1, 2, 3)) * a.shape[1]).clamp(min=1)


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for [0, 1] images; a perfect region is capped at 100."""
    return (10 * torch.log10(1.0 / mse.clamp(min=1e-10))).clamp(max=100.0)


def _gaussian_window(size: int, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Wang et al.'s SSIM per pixel (Gaussian window 7, sigma 1.5, or the largest odd window
    that fits), averaged over channels: (B, 1, H, W)."""
    size = min(7, *(s - (1 - s % 2) for s in a.shape[2:]))
    c = a.shape[1]
    win = _gaussian_window(size).repeat(c, 1, 1, 1)
    pad = size // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (pad,) * 4, mode="reflect" if pad else "constant"), win, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    s = num / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=1, keepdim=True)


def region_ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    s = ssim_map(a, b)
    return (s * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp(min=1)


class RandomFeatures(nn.Module):
    """A fixed convolutional feature extractor with seeded random weights (no download)."""

    def __init__(self, seed: int = 0, dim: int = 64) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        widths = [(3, 32, 1), (32, 64, 2), (64, dim, 2)]
        self.convs = nn.ModuleList()
        for c_in, c_out, stride in widths:
            conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
            assert conv.bias is not None
            with torch.no_grad():  # He initialisation from the fixed generator
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
                conv.weight.mul_(math.sqrt(2 / (c_in * 9)))
                conv.bias.zero_()
            self.convs.append(conv)
        self.requires_grad_(False).eval()

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        x = images01.expand(-1, 3, -1, -1) if images01.shape[1] == 1 else images01
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False) * 2 - 1
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x.mean(dim=(2, 3))


_FEATURES = RandomFeatures()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Frechet distance between Gaussians fitted to two feature sets (None below 2 samples)."""
    if len(a) < 2 or len(b) < 2:
        return None
    x, y = a.double().numpy(), b.double().numpy()
    mu_x, mu_y = x.mean(0), y.mean(0)
    eye = np.eye(x.shape[1]) * 1e-6  # keeps the square root defined for low-rank covariances
    cov_x, cov_y = np.cov(x, rowvar=False) + eye, np.cov(y, rowvar=False) + eye
    root = linalg.sqrtm(cov_x @ cov_y)
    trace = np.trace(cov_x) + np.trace(cov_y) - 2 * float(np.real(np.trace(root)))
    return float(np.sum((mu_x - mu_y) ** 2) + max(trace, 0.0))


def _mean(t: torch.Tensor) -> float | None:
    return float(t.mean()) if len(t) else None


def group_report(done: Completions, reference: Completions) -> dict[str, float | int | None]:
    """The figures of one group; ``reference`` holds the original model's completions."""
    if not len(done.truth):
        return {
            "samples": 0,
            "mse": None,
            "psnr": None,
            "ssim": None,
            "fd_random": None,
            "encoder_cosine": None,
        }
    mse = region_mse(done.completed, done.truth, done.mask)
    with torch.no_grad():
        fd = frechet_distance(_FEATURES(done.completed), _FEATURES(done.truth))
    cosine = F.cosine_similarity(done.embedding, reference.embedding, dim=1)
    return {
        "samples": len(done.truth),
        "mse": _mean(mse),
        "psnr": _mean(psnr(mse)),
        "ssim": _mean(region_ssim(done.completed, done.truth, done.mask)),
        "fd_random": fd,
        "encoder_cosine": _mean(cosine),
    }


def measure(
    model: I2IModel,
    sets: EvalSets,
    spec: InputSpec,
    transform: Transform,
    device: torch.device,
    originals: dict[str, Completions] | None = None,
) -> tuple[dict[str, object], dict[str, Completions]]:
    """The report per group, and the completions (pass the original model's as ``originals`` to
    compare embeddings with them; without, the model is its own reference)."""
    done = {k: run_completions(model, g, spec, transform, device) for k, g in sets.groups().items()}
    ref = originals or done
    report: dict[str, object] = {k: group_report(done[k], ref[k]) for k in done}
    report["transform"] = (
        {"kind": "reconstruction"}
        if model.reconstructs
        else {"kind": transform.kind, "size": transform.size, "cell": transform.cell}
    )
    return report, done


def forward_samples(report: dict[str, object], passes: int = 1) -> int:
    """Forward passes of one measurement (``passes`` per image: a sampler's steps)."""
    images = sum(
        int(g["samples"]) for g in report.values() if isinstance(g, dict) and "samples" in g
    )
    return images * passes


def _tile(img: torch.Tensor, scale: int) -> Image.Image:
    arr = (img.clamp(0, 1) * 255).round().byte()
    rgb = arr.expand(3, -1, -1) if arr.shape[0] == 1 else arr
    pil = Image.fromarray(rgb.permute(1, 2, 0).numpy(), mode="RGB")
    return pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)


def _shown_input(truth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The masked view the model gets, hidden pixels painted magenta so nobody mistakes them."""
    rgb = truth.expand(3, -1, -1) if truth.shape[0] == 1 else truth
    hole = torch.tensor([0.85, 0.2, 0.85]).view(3, 1, 1)
    return rgb * (1 - mask) + hole * mask


def completion_grid(
    before: dict[str, Completions],
    after: dict[str, Completions],
    per_group: int = GRID_IMAGES,
    show_forget: bool = True,
) -> bytes:
    """A PNG: for the first ``per_group`` retain and forget images, the original, the masked
    input, the original model's completion and the unlearned model's, one row each.
    ``show_forget=False`` leaves the forget images out (when they are the data to erase)."""
    rows = ("original", "masked input", "before", "after")
    shown = ("retain", "forget") if show_forget else ("retain",)
    groups = [g for g in shown if len(before[g].truth)]
    h, w = (before[groups[0]].truth.shape[2:]) if groups else (8, 8)
    scale = max(1, math.ceil(56 / max(h, w)))
    tw, th, gap, label_w, head_h = w * scale, h * scale, 4, 96, 18
    counts = [min(per_group, len(before[g].truth)) for g in groups]
    width = label_w + sum(n * (tw + gap) + 3 * gap for n in counts)
    canvas = Image.new("RGB", (width, head_h + len(rows) * (th + gap)), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for r, name in enumerate(rows):
        draw.text((4, head_h + r * (th + gap) + th // 2 - 6), name, fill="black", font=font)
    x0 = label_w
    for g, n in zip(groups, counts, strict=True):
        draw.text((x0, 2), f"{g} ({n} of {len(before[g].truth)})", fill="black", font=font)
        for i in range(n):
            images = (
                before[g].truth[i],
                _shown_input(before[g].truth[i], before[g].mask[i]),
                before[g].completed[i],
                after[g].completed[i],
            )
            for r, img in enumerate(images):
                canvas.paste(_tile(img, scale), (x0 + i * (tw + gap), head_h + r * (th + gap)))
        x0 += n * (tw + gap) + 3 * gap
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def weights_unchanged(model: nn.Module, original: nn.Module, encoder: list[str]) -> dict[str, Any]:
    """Proof that only the declared encoder moved: every other tensor compared bit for bit."""
    return frozen_report(model.state_dict(), original.state_dict(), encoder)


def frozen_report(
    mine: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor], encoder: list[str]
) -> dict[str, Any]:
    """The same comparison on two state dicts (say, two checkpoint files)."""
    frozen = [k for k in mine if not any(k.startswith(p) for p in encoder)]
    changed = [k for k in frozen if not torch.equal(mine[k].cpu(), theirs[k].cpu())]
    moved = [k for k in mine if k not in frozen and not torch.equal(mine[k].cpu(), theirs[k].cpu())]
    return {
        "frozen_tensors": len(frozen),
        "frozen_changed": changed[:20],
        "frozen_unchanged": not changed,
        "encoder_tensors_changed": len(moved),
    }
