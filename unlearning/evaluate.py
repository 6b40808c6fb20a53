"""Classifier metrics: per-class accuracy, split into forget and retain classes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from unlearning.data import ImageSource, InputSpec, iterate


@dataclass(frozen=True)
class ClassCounts:
    correct: np.ndarray
    total: np.ndarray

    def per_class(self) -> list[float | None]:
        return [
            (float(c) / float(t)) if t else None
            for c, t in zip(self.correct, self.total, strict=True)
        ]

    def accuracy(self, classes: Sequence[int]) -> float | None:
        """Sample-weighted accuracy over the listed classes (not a mean of batch accuracies)."""
        idx = list(classes)
        total = int(self.total[idx].sum())
        return float(self.correct[idx].sum()) / total if total else None


@torch.no_grad()
def count_correct(
    model: nn.Module,
    source: ImageSource,
    indices: np.ndarray,
    spec: InputSpec,
    num_classes: int,
    device: torch.device,
    batch_size: int = 512,
) -> ClassCounts:
    model.eval()
    correct = np.zeros(num_classes, dtype=np.int64)
    total = np.zeros(num_classes, dtype=np.int64)
    for x, y in iterate(source, indices, spec, batch_size):
        pred = model(x.to(device)).argmax(dim=1).cpu()
        np.add.at(total, y.numpy(), 1)
        np.add.at(correct, y[pred == y].numpy(), 1)
    return ClassCounts(correct, total)


def accuracy_report(
    counts: ClassCounts, forget_classes: Sequence[int], class_names: Sequence[str]
) -> dict[str, object]:
    """The figures stored with a job: forget / retain / overall accuracy and per class."""
    retain = [c for c in range(len(class_names)) if c not in set(forget_classes)]
    return {
        "forget_accuracy": counts.accuracy(forget_classes),
        "retain_accuracy": counts.accuracy(retain),
        "overall_accuracy": counts.accuracy(range(len(class_names))),
        "per_class": dict(zip(class_names, counts.per_class(), strict=True)),
        "samples": int(counts.total.sum()),
    }
