"""Class deletion by distillation toward the original renormalised over the remaining classes.

A model retrained without a class gives its images the probabilities the rest of the network
would: whatever is left once that class is out. The original already holds that answer: its
probabilities with the forgotten classes' logits set to minus infinity and the rest
renormalised. The student, a copy of the original, is trained toward those targets on a mix of
forget and retain images, changing only its trailing parameter tensors (the last block and the
head, where class evidence is assembled) with BatchNorm in eval mode, so that the features the
rest of the network computes, and the statistics they are normalised by, stay the original's.

``run_auto`` is the default class deletion: attempts of growing reach within one budget, each
checked by the acceptance gate the job applies, stopping at the first that passes.

The defaults (a trailing fifth of the tensors, temperature 1, Adam at 1e-3, a third of each
batch from the forget set) were chosen on two pilot runs (a small ResNet and torchvision's
resnet18 on 6,000 Fashion-MNIST images) and checked across architectures in
``bench/default_matrix.py``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from unlearning.methods.common import (
    BATCH,
    FORWARD_SHARE,
    SEED,
    MethodResult,
    UnlearningTask,
    check_bounds,
)
from unlearning.progress import Progress

# Each distilled image: one forward and backward pass of the student, one forward of the teacher.
PASSES_PER_IMAGE = 1 + FORWARD_SHARE


@dataclass(frozen=True)
class DistillConfig:
    # Method work in epoch-equivalents of the training split (sample passes / training images).
    budget_epochs: float = 0.1
    # The share of parameter tensors trained, counted from the output end.
    tail_fraction: float = 0.2
    temperature: float = 1.0
    lr: float = 1e-3
    # The share of each batch drawn from the forget set; the rest comes from retain data.
    forget_share: float = 0.34
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        check_bounds(
            self,
            {"batch_size": BATCH, "seed": SEED},
            {
                "budget_epochs": (0.0, 1_000.0, False),
                "tail_fraction": (0.0, 1.0, False),
                "temperature": (0.0, 100.0, False),
                "lr": (0.0, 10.0, False),
                "forget_share": (0.0, 1.0, False),
            },
        )


@dataclass(frozen=True)
class AutoConfig:
    """The default class deletion: a head refit on ``head_share`` of the budget, then one
    distillation per entry of ``tails`` (the share of tensors trained), splitting the rest."""

    budget_epochs: float = 0.1
    head_share: float = 0.3
    tails: tuple[float, ...] = (0.2, 0.5)
    temperature: float = 1.0
    lr: float = 1e-3
    forget_share: float = 0.34
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.tails) > 8:
            raise ValueError("tails lists at most 8 tail fractions")
        for tail in self.tails:
            if not 0.0 < float(tail) <= 1.0:
                raise ValueError(f"tails must each be in (0, 1], got {tail}")
        check_bounds(self, {}, {"head_share": (0.0, 1.0, True)})
        if not self.tails and self.head_share < 1.0:
            raise ValueError("with no tails the head refit takes the whole budget: head_share 1")
        self.step(self.tails[0] if self.tails else 1.0, self.budget_epochs)  # shared bounds

    def step(self, tail: float, budget_epochs: float) -> DistillConfig:
        return DistillConfig(
            budget_epochs=budget_epochs,
            tail_fraction=tail,
            temperature=self.temperature,
            lr=self.lr,
            forget_share=self.forget_share,
            batch_size=self.batch_size,
            seed=self.seed,
        )

    def tail_share(self) -> float:
        return (1.0 - self.head_share) / len(self.tails) if self.tails else 0.0


def trailing_parameters(model: nn.Module, fraction: float) -> list[str]:
    """The names of the last ``fraction`` of parameter tensors, in definition order (at least
    one): for the usual networks, the last block and the classifier head."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    count = max(1, math.ceil(fraction * len(names)))
    return names[-count:]


def renormalised_targets(
    teacher_logits: torch.Tensor, forget_classes: list[int], temperature: float
) -> torch.Tensor:
    """The teacher's probabilities with the forgotten classes removed and the rest rescaled."""
    masked = teacher_logits.clone()
    masked[:, forget_classes] = float("-inf")
    return F.softmax(masked / temperature, dim=1)


def _batches(
    task: UnlearningTask, images: int, config: DistillConfig, gen: np.random.Generator
) -> list[np.ndarray]:
    """Index batches totalling ``images``, each ``forget_share`` forget and the rest retain,
    each set drawn without replacement until it runs out, then again."""
    from_forget = round(images * config.forget_share) if len(task.forget_idx) else 0
    if not len(task.retain_idx):
        from_forget = images
    picks = np.concatenate(
        [
            _cycled(task.forget_idx, from_forget, gen),
            _cycled(task.retain_idx, images - from_forget, gen),
        ]
    )
    gen.shuffle(picks)
    return [picks[i : i + config.batch_size] for i in range(0, len(picks), config.batch_size)]


def _cycled(idx: np.ndarray, n: int, gen: np.random.Generator) -> np.ndarray:
    if n <= 0 or not len(idx):
        return np.empty(0, dtype=np.int64)
    rounds = [gen.permutation(idx) for _ in range(math.ceil(n / len(idx)))]
    return np.concatenate(rounds)[:n]


def least_budget(config: DistillConfig | AutoConfig, train_size: int) -> float:
    """The smallest budget that pays for at least one image in every attempt (below it an
    attempt would have nothing to train on)."""
    if not train_size:
        return 0.0
    if isinstance(config, DistillConfig):
        return PASSES_PER_IMAGE / train_size
    needs = [PASSES_PER_IMAGE / (config.tail_share() * train_size)] if config.tails else []
    if config.head_share:
        needs.append(FORWARD_SHARE / (config.head_share * train_size))
    return max(needs, default=0.0)


def images_for(budget_epochs: float, train_size: int) -> int:
    """How many images a budget pays for (the teacher's forward pass included)."""
    return int(budget_epochs * train_size / PASSES_PER_IMAGE)


def distill(
    task: UnlearningTask,
    teacher: nn.Module,
    config: DistillConfig,
    phase: str = "distill",
) -> MethodResult:
    """Train ``task.model``'s trailing tensors toward ``teacher`` renormalised, in place."""
    if not task.forget_classes:
        raise ValueError("distillation forgets classes; name forget_classes")
    model = task.model.to(task.device)
    teacher = teacher.to(task.device).eval()
    trained = set(trailing_parameters(model, config.tail_fraction))
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.requires_grad_(name in trained)
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if n in trained], lr=config.lr)
    gen = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    batches = _batches(task, images_for(config.budget_epochs, len(task.source)), config, gen)
    start, seen = time.perf_counter(), 0
    # Eval mode throughout: BatchNorm keeps the original's statistics, dropout is off.
    model.eval()
    try:
        for k, idx in enumerate(batches):
            x = task.spec.prepare(task.source.images(idx)).to(task.device)
            with torch.no_grad():
                target = renormalised_targets(teacher(x), task.forget_classes, config.temperature)
            logp = F.log_softmax(model(x) / config.temperature, dim=1)
            loss = -(target * logp).sum(dim=1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
            task.progress(phase, (k + 1) / len(batches))
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(frozen[name])
    task.progress(phase, 1.0)
    result = MethodResult()
    result.phase_seconds[phase] = time.perf_counter() - start
    result.samples_processed[phase] = seen
    result.forward_samples = seen  # the teacher's forward passes
    result.details.update(
        {
            "distilled_images": seen,
            "trained_tensors": len(trained),
            "total_tensors": len(frozen),
            "trained_weights": sum(p.numel() for n, p in model.named_parameters() if n in trained),
            "total_weights": sum(p.numel() for p in model.parameters()),
        }
    )
    return result


def classifier_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """The last linear layer with one output per class: where logits are made."""
    heads = [
        m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes
    ]
    if not heads:
        raise ValueError("the network has no linear layer with one output per class")
    return heads[-1]


def refit_head(
    task: UnlearningTask, images: int, config: DistillConfig, steps: int = 300
) -> MethodResult:
    """Fit the classifier head alone to the original's renormalised probabilities.

    One forward pass of the unchanged network over ``images`` gives both the head's inputs and
    the original's logits; the head is then optimised on those cached features, which costs no
    further passes through the network. It changes only the head, so what it cannot reach (the
    class evidence in the features) is left to the distillation attempts after it.
    """
    if not task.forget_classes:
        raise ValueError("a head refit forgets classes; name forget_classes")
    model = task.model.to(task.device).eval()
    head = classifier_head(model, task.num_classes)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    gen = np.random.default_rng(config.seed)
    batches = _batches(task, images, config, gen)
    start, logits = time.perf_counter(), []
    try:
        with torch.no_grad():
            for k, idx in enumerate(batches):
                x = task.spec.prepare(task.source.images(idx)).to(task.device)
                logits.append(model(x))
                task.progress("head", 0.8 * (k + 1) / len(batches))
    finally:
        hook.remove()
    features = torch.cat(captured).flatten(1)
    target = renormalised_targets(torch.cat(logits), task.forget_classes, config.temperature)
    opt = torch.optim.Adam(head.parameters(), lr=10 * config.lr)
    for _ in range(steps):
        logp = F.log_softmax(head(features) / config.temperature, dim=1)
        loss = -(target * logp).sum(dim=1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    head.zero_grad(set_to_none=True)
    task.progress("head", 1.0)
    result = MethodResult()
    result.phase_seconds["head"] = time.perf_counter() - start
    result.forward_samples = len(features)
    result.details.update({"head_images": len(features), "head_steps": steps})
    return result


def run_distill(task: UnlearningTask, config: DistillConfig) -> MethodResult:
    return distill(task, copy.deepcopy(task.model), config)


def run_auto(task: UnlearningTask, config: AutoConfig) -> MethodResult:
    """A head refit, then distillation with a growing trainable tail, until the acceptance gate
    passes or the budget is spent; every attempt is recorded with its cost and, when it failed,
    why the next one was needed."""
    teacher = copy.deepcopy(task.model)
    result = MethodResult()
    attempts: list[dict[str, Any]] = []
    total = len(config.tails) + (1 if config.head_share else 0)
    plan: list[tuple[str, float]] = [("head", config.head_share)] if config.head_share else []
    plan += [(f"tail {tail:g}", tail) for tail in config.tails]
    for number, (name, value) in enumerate(plan):
        progress = _attempt_progress(task, number, total)
        step_task = replace(task, progress=progress)
        if name == "head":
            images = int(config.budget_epochs * value * len(task.source) / FORWARD_SHARE)
            part = refit_head(step_task, images, config.step(1.0, config.budget_epochs))
            attempt = {"attempt": number + 1, "method": "head_refit"}
        else:
            step = config.step(value, config.budget_epochs * config.tail_share())
            part = distill(step_task, teacher, replace(step, seed=config.seed + number))
            attempt = {"attempt": number + 1, "method": "distill", "tail_fraction": value}
        _merge(result, part)
        passes = sum(part.samples_processed.values()) + FORWARD_SHARE * part.forward_samples
        attempt.update(
            {
                "sample_passes": passes,
                "epoch_equivalents": passes / max(len(task.source), 1),
                "seconds": sum(part.phase_seconds.values()),
                "details": part.details,
            }
        )
        attempts.append(attempt)
        if task.accept is None:
            attempt["gate"] = "not checked"
            continue
        failures, checked = task.accept(task.model)
        result.check_samples += checked
        attempt["gate"] = "passed" if not failures else "failed"
        attempt["failures"] = failures
        if not failures:
            break
        if number + 1 < len(plan):
            attempt["next"] = (
                f"failed {', '.join(f['check'] for f in failures)}: next, {plan[number + 1][0]}"
            )
    result.details["attempts"] = attempts
    result.final_checked = task.accept is not None
    task.progress("distill", 1.0)
    return result


def _attempt_progress(task: UnlearningTask, number: int, total: int) -> Progress:
    def report(phase: str, fraction: float) -> None:
        task.progress(phase, (number + fraction) / total)

    return report


def _merge(into: MethodResult, part: MethodResult) -> None:
    for k, v in part.phase_seconds.items():
        into.phase_seconds[k] = into.phase_seconds.get(k, 0.0) + v
    for k, n in part.samples_processed.items():
        into.samples_processed[k] = into.samples_processed.get(k, 0) + n
    into.forward_samples += part.forward_samples
    into.check_samples += part.check_samples
