"""I2I encoder unlearning (methods doc section 2): only the encoder trains; retain embeddings
stay close to a frozen copy of the original encoder, forget embeddings are pulled to the frozen
encoder's embedding of noise. Both terms are minimised: there is no gradient ascent.

``L = retain_alpha * MSE(E(T(x_r)), E0(T(x_r))) + alpha * MSE(E(T(x_f)), E0(T(n)))``, summed
over the encoder's feature levels, with the same mask T for student, teacher and noise inputs.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from unlearning.data import ImageSource, InputSpec, sample_per_class
from unlearning.i2i.architectures import Condition, Features, I2IModel, trainable
from unlearning.i2i.masks import NOISE_TYPES, Transform, noise_input
from unlearning.i2i.verify import to_pixels
from unlearning.methods.common import SEED, MethodResult, check_bounds
from unlearning.progress import Progress, no_progress

# Section 2.7 of the methods doc: MAGE's main_unlearn.py and Palette's unlearning config, tuned
# for ViT-B (86 M encoder parameters) and Palette's ImageNet U-Net.
_PAPER: dict[str, object] = {"lr": 5e-5, "retain_ratio": 1.0}
# Networks with a small trainable encoder hardly move at the papers' step size in the papers'
# few hundred steps (docs/benchmarks.md, image-to-image: weight distance 0.005 at lr 5e-5
# against 0.055 at 1e-3): they take the larger step, more epochs, a heavier forget weight and
# twice the retain images, the small-model recipe that passed the gate there.
_SMALL: dict[str, object] = {"lr": 1e-3, "epochs": 10, "alpha": 0.3, "retain_ratio": 2.0}
RECIPES: dict[str, dict[str, object]] = {
    "mage": {
        **_PAPER,
        "alpha": 0.2,
        "optimizer": "adamw",
        "weight_decay": 0.05,
        "epochs": 6,
        "warmup_epochs": 5.0,
        "schedule": "warmup_cosine",
        "grad_clip": 3.0,
    },
    "palette": {
        **_PAPER,
        "alpha": 0.1,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "epochs": 3,
        "warmup_epochs": 0.0,
        "schedule": "constant",
        "grad_clip": 0.0,
    },
}
RECIPES["mage_small"] = {**RECIPES["mage"], **_SMALL, "warmup_epochs": 1.0}
RECIPES["palette_small"] = {**RECIPES["palette"], **_SMALL}
# The library families' forget weights, measured on Fashion-MNIST class requests
# (docs/benchmarks.md, library checkpoints): transformers' MAE needs twice the built-in ViT's
# pull (0.3 moved its forget completions 0.85 dB), a VQ-GAN's convolutional encoder half of it
# (0.3 cost its retain reconstructions 1.54 dB).
RECIPES["mae_small"] = {**RECIPES["mage_small"], "alpha": 0.6}
RECIPES["vq_small"] = {**RECIPES["mage_small"], "alpha": 0.15}
FAMILY_RECIPE = {
    "vqgan": "mage",
    "mae": "mage",
    "vq": "mage",
    "diffusion": "palette",
    "vqgan/small": "mage_small",
    "mae/small": "mae_small",
    "vq/small": "vq_small",
    "diffusion/small": "palette_small",
}
# Below this many trainable encoder parameters a network takes its family's small recipe.
SMALL_ENCODER_PARAMETERS = 2_000_000


def recipe_family(family: str, encoder_parameters: int) -> str:
    """The key of FAMILY_RECIPE for a network of ``family`` training that many parameters."""
    return f"{family}/small" if encoder_parameters < SMALL_ENCODER_PARAMETERS else family


@dataclass(frozen=True)
class I2IConfig:
    """Every field left None takes the value of ``recipe``, chosen by the network's family (MAGE's
    for token and ViT models, Palette's for U-Nets) and the size of its trainable encoder (the
    ``_small`` recipes below SMALL_ENCODER_PARAMETERS); the job records the resolved values."""

    recipe: str | None = None
    alpha: float | None = None
    retain_alpha: float = 1.0
    lr: float | None = None
    epochs: int | None = None
    warmup_epochs: float | None = None
    schedule: str | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    batch_size: int = 32
    noise_type: str = "normal_batchstats"
    # MAGE trains on 120 random images per forget class (--num_image_per_class); a sample
    # request uses every named sample.
    images_per_class: int = 120
    # Retain images per forget image; the smaller side is oversampled to balance the batches.
    retain_ratio: float | None = None
    amp: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.recipe is not None and self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {self.recipe!r}")
        if self.noise_type not in NOISE_TYPES:
            raise ValueError(f"noise_type must be one of {list(NOISE_TYPES)}")
        if self.schedule not in (None, "warmup_cosine", "constant"):
            raise ValueError("schedule must be 'warmup_cosine' or 'constant'")
        if self.optimizer not in (None, "adamw", "adam"):
            raise ValueError("optimizer must be 'adamw' or 'adam'")
        check_bounds(
            self,
            {"batch_size": (2, 65_536), "images_per_class": (1, 1_000_000), "seed": SEED},
            {"retain_alpha": (0.0, 1000.0, True)},
        )
        for name, (low, high) in (("lr", (0.0, 10.0)), ("retain_ratio", (0.0, 100.0))):
            if getattr(self, name) is not None:
                check_bounds(self, {}, {name: (low, high, False)})
        if self.epochs is not None:
            check_bounds(self, {"epochs": (1, 1_000)}, {})
        for name, high in (("alpha", 1000.0), ("weight_decay", 1.0), ("grad_clip", 1e6)):
            if getattr(self, name) is not None:
                check_bounds(self, {}, {name: (0.0, high, True)})
        if self.warmup_epochs is not None:
            check_bounds(self, {}, {"warmup_epochs": (0.0, float(self.epochs or 1_000), True)})

    def resolved(self, family: str) -> I2IConfig:
        recipe = self.recipe or FAMILY_RECIPE.get(family, "mage")
        base = RECIPES[recipe]
        filled = {k: v for k, v in base.items() if getattr(self, k) is None}
        if self.epochs is not None and self.warmup_epochs is None:
            # Shorter or longer runs keep the recipe's share of warm-up (MAGE: 5 of 6 epochs).
            share = float(base["warmup_epochs"]) / float(base["epochs"])  # type: ignore[arg-type]
            filled["warmup_epochs"] = share * self.epochs
        return replace(self, recipe=recipe, **filled)  # type: ignore[arg-type]


def defaults_for(family: str) -> dict[str, object]:
    """The parameters a request gets for a network of ``family`` when it sets none."""
    return asdict(I2IConfig().resolved(family))


def resolve_for(config: I2IConfig, family: str) -> I2IConfig:
    return config.resolved(family)


@dataclass
class I2ITask:
    """The model to change in place (its encoder, named by ``encoder`` prefixes) and the data.

    ``forget_idx`` indexes ``forget_source``; ``retain_idx`` indexes ``retain_source``, which is
    the training split without the forget set, or a proxy dataset the owner may keep.
    """

    model: I2IModel
    forget_source: ImageSource
    forget_idx: np.ndarray
    retain_source: ImageSource
    retain_idx: np.ndarray
    forget_classes: list[int] | None
    spec: InputSpec
    transform: Transform
    encoder: list[str]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: Progress = no_progress


class EmptySet(ValueError):
    """The forget or the retain set holds no image: there is nothing to train on."""


def training_sets(task: I2ITask, config: I2IConfig) -> tuple[np.ndarray, np.ndarray]:
    """The forget images the method reads (a sample of each forget class, or every named sample)
    and a retain sample ``retain_ratio`` times as large (all of it if smaller)."""
    if not len(task.forget_idx):
        raise EmptySet("the forget set has no training image (a forget class may have none)")
    if not len(task.retain_idx):
        raise EmptySet("the retain set has no image: name other classes or a proxy retain set")
    rng = np.random.default_rng(config.seed)
    forget = task.forget_idx
    if task.forget_classes is not None:
        targets = task.forget_source.targets[forget]
        picked = sample_per_class(targets, task.forget_classes, config.images_per_class, rng)
        forget = forget[picked]
    ratio = float(config.retain_ratio or 1.0)
    wanted = min(len(task.retain_idx), max(1, math.ceil(ratio * len(forget))))
    retain = np.sort(rng.choice(task.retain_idx, size=wanted, replace=False))
    return forget, retain


def _cycled(
    idx: np.ndarray, per_step: int, steps: int, gen: torch.Generator
) -> Iterator[np.ndarray]:
    """``steps`` batches of ``per_step`` indices, reshuffled whenever ``idx`` runs out (so the
    smaller of the retain and forget sets is oversampled, as the official code does)."""
    order: list[int] = []
    for _ in range(steps):
        while len(order) < per_step:
            order += idx[torch.randperm(len(idx), generator=gen).numpy()].tolist()
        yield np.asarray(order[:per_step])
        order = order[per_step:]


def _optimizer(params: list[tuple[str, torch.nn.Parameter]], c: I2IConfig) -> torch.optim.Optimizer:
    # MAGE puts no weight decay on biases and other 1-D parameters (norms, embeddings' scales).
    decay = [p for _, p in params if p.ndim > 1]
    no_decay = [p for _, p in params if p.ndim <= 1]
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": c.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    lr = float(c.lr or 0.0)
    if c.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    return torch.optim.Adam(groups, lr=lr)


def learning_rate(c: I2IConfig, step: int, steps_per_epoch: int) -> float:
    """Per iteration: linear warm-up over ``warmup_epochs``, then half-cosine to 0 (MAGE), or
    constant (Palette)."""
    lr = float(c.lr or 0.0)
    if c.schedule == "constant":
        return lr
    epoch = step / steps_per_epoch
    warmup = float(c.warmup_epochs or 0.0)
    total = float(c.epochs or 1)
    if epoch < warmup:
        return lr * epoch / warmup
    if total <= warmup:
        return lr
    return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (total - warmup)))


def _autocast(c: I2IConfig, device: torch.device) -> AbstractContextManager[object]:
    # Mixed precision on GPU only (bfloat16: no loss scaling needed); CPU runs in float32.
    if c.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def feature_loss(student: Features, target: Features) -> torch.Tensor:
    """Mean squared error summed over feature levels (Palette sums over its U-Net levels)."""
    return sum(
        (F.mse_loss(s.float(), t.float()) for s, t in zip(student, target, strict=True)),
        torch.zeros(()),
    )


def _on(condition: Condition | None, device: torch.device) -> Condition | None:
    return None if condition is None else {k: v.to(device) for k, v in condition.items()}


def _part(condition: Condition | None, rows: slice) -> Condition | None:
    return None if condition is None else {k: v[rows] for k, v in condition.items()}


def run_i2i(task: I2ITask, config: I2IConfig) -> MethodResult:
    device, model = task.device, task.model.to(task.device)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    # Parameters the library marks fixed (a sin-cos position table) stay fixed.
    fixed = {n for n, p in model.named_parameters() if not p.requires_grad}
    params = [
        (n, p) for n, p in model.named_parameters() if trainable(n, task.encoder) and n not in fixed
    ]
    size = sum(p.numel() for _, p in params)
    c = config.resolved(recipe_family(model.family, size))
    chosen = {n for n, _ in params}
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    opt = _optimizer(params, c)
    forget, retain = training_sets(task, c)
    half = c.batch_size // 2
    steps_per_epoch = max(1, math.ceil(max(len(forget), len(retain)) / half))
    total = steps_per_epoch * int(c.epochs or 1)
    gen = torch.Generator().manual_seed(c.seed)
    torch.manual_seed(c.seed)
    start, seen, losses = time.perf_counter(), 0, {"retain": 0.0, "forget": 0.0}
    model.train()
    h, w = task.spec.shape[1:]
    batches = zip(_cycled(forget, half, total, gen), _cycled(retain, half, total, gen), strict=True)
    for step, (f_idx, r_idx) in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = learning_rate(c, step, steps_per_epoch)
        xr = task.spec.prepare(task.retain_source.images(r_idx))
        xf = task.spec.prepare(task.forget_source.images(f_idx))
        n_r = len(xr)
        mask = model.training_mask(task.transform, n_r + len(xf), h, w, gen)
        x = torch.cat([xr, xf])
        # Noise statistics of the whole mixed batch, at the model's size (MAGE's batch stats).
        noise = noise_input(to_pixels(x, task.spec), len(xf), c.noise_type, task.spec, gen)
        condition = _on(model.training_condition(len(x), gen), device)
        x = x.to(device)
        mask, noise = mask.to(device), noise.to(device)
        target = model.forget_target(x[n_r:], noise, mask[n_r:])
        with _autocast(c, device):
            with torch.no_grad():
                target_r = teacher.encode(x[:n_r], mask[:n_r], _part(condition, slice(0, n_r)))
                target_f = teacher.encode(target, mask[n_r:], _part(condition, slice(n_r, None)))
            student = model.encode(x, mask, condition)
            retain_loss = feature_loss([s[:n_r] for s in student], target_r)
            forget_loss = feature_loss([s[n_r:] for s in student], target_f)
            loss = c.retain_alpha * retain_loss + float(c.alpha or 0.0) * forget_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for _, p in params], c.grad_clip)
        opt.step()
        seen += len(x)
        losses = {"retain": float(retain_loss.detach()), "forget": float(forget_loss.detach())}
        task.progress("i2i", (step + 1) / total)
    for name, p in model.named_parameters():
        p.requires_grad_(name not in fixed)
    model.eval()
    return MethodResult(
        phase_seconds={"i2i": time.perf_counter() - start},
        samples_processed={"i2i": seen},
        details={
            "resolved_params": asdict(c),
            "trainable_parameters": sum(p.numel() for _, p in params),
            "frozen_parameters": sum(p.numel() for p in model.parameters())
            - sum(p.numel() for _, p in params),
            "forget_images": len(forget),
            "retain_images": len(retain),
            "steps": total,
            "final_loss": losses,
        },
    )
