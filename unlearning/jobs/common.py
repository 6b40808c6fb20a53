"""What every job recipe shares: what it is asked to do, what it hands back, what it spent."""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import sklearn
import torch
import torchvision

from unlearning import data
from unlearning.methods.costs import FORWARD_SHARE

EVAL_SEED = 0  # the evaluation groups are the same for every job on the same data

# Phases of the job itself (not of its method); they run at batch sizes no parameter sets.
MEASUREMENT_PHASES = frozenset({"load", "evaluate_before", "evaluate", "relearn", "save"})

Plan = Sequence[tuple[str, float]]


class JobProgress(Protocol):
    """Told the job's phases with their rough weights, then called as the work goes on. A call
    may raise to stop the job (a cancel, a lost lease, the worker's shutdown)."""

    def set_plan(self, plan: Plan) -> None: ...

    def __call__(self, phase: str, fraction: float) -> None: ...


class NoProgress:
    """A ``JobProgress`` that reports nowhere (tests, benchmarks)."""

    def set_plan(self, plan: Plan) -> None:
        pass

    def __call__(self, phase: str, fraction: float) -> None:
        pass


@dataclass(frozen=True)
class JobSpec:
    """The request, the model and the data of one job, as the recipes read them."""

    method: str
    params: dict[str, Any]
    forget_classes: list[int] | None
    forget_samples: list[str] | None
    acceptance: dict[str, Any]
    reference: dict[str, Any] | None
    measure_relearn_time: bool
    architecture: str
    architecture_args: dict[str, Any]
    class_names: list[str]
    input_spec: data.InputSpec
    dataset_kind: str
    dataset_location: str | None
    task: str = "classification"
    # Image-to-image models: the trained part, the completion task, the dataset's class names
    # (the model has none) and the proxy retain set, if the request named one.
    encoder: list[str] | None = None
    transform: dict[str, Any] | None = None
    dataset_class_names: list[str] = field(default_factory=list)
    retain_dataset_id: str | None = None
    retain_dataset_kind: str | None = None
    retain_dataset_location: str | None = None
    # What earlier requests in this version's lineage forgot from the same dataset: never
    # retained (training on it again would bring it back), whatever this request names.
    earlier_forget_classes: list[int] = field(default_factory=list)
    earlier_forget_samples: list[str] = field(default_factory=list)
    # How the original was trained, when its owner registered it: {"epochs", ...}.
    training: dict[str, Any] | None = None
    # The most epoch-equivalents of method work the request allows (checked at submit).
    budget_epochs: float | None = None
    # A folder of this model version's cached SSD importances on this dataset (None: none).
    importance_cache: str | None = None
    # The dataset's id: with its content, what a worker's cache keys the decoded data by.
    dataset_id: str | None = None


@dataclass
class Cost:
    """Wall time per phase, and samples through the model (forward+backward, or forward only)."""

    seconds: dict[str, float] = field(default_factory=dict)
    trained: dict[str, int] = field(default_factory=dict)
    forward: int = 0  # all forward-only samples: the method's and the measurements'
    method_forward: int = 0  # the method's share of ``forward``
    evaluation_trained: int = 0  # forward+backward samples of measurements (relearn time)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def add(self, seconds: dict[str, float], trained: dict[str, int], prefix: str = "") -> None:
        for k, v in seconds.items():
            self.seconds[prefix + k] = self.seconds.get(prefix + k, 0.0) + v
        for k, n in trained.items():
            self.trained[prefix + k] = self.trained.get(prefix + k, 0) + n


REFERENCE_PREFIX = "reference_"


def cost_summary(
    cost: Cost, train_size: int, retain_size: int, retrain_epochs: float | None
) -> dict[str, Any]:
    """What the job spent, in sample passes (forward+backward equivalents), in epochs of the
    training split, and against a retrain of ``retrain_epochs`` over the retain data (None:
    nothing says how the model was trained, so no ratio)."""
    method_trained = sum(n for k, n in cost.trained.items() if not k.startswith(REFERENCE_PREFIX))
    reference = sum(n for k, n in cost.trained.items() if k.startswith(REFERENCE_PREFIX))
    passes = {
        "method": method_trained + FORWARD_SHARE * cost.method_forward,
        "evaluation": cost.evaluation_trained
        + FORWARD_SHARE * (cost.forward - cost.method_forward),
        "reference": float(reference),
    }
    retrain = None
    if retrain_epochs is not None:
        retrain_passes = retrain_epochs * retain_size
        retrain = {
            "epochs": retrain_epochs,
            "sample_passes": retrain_passes,
            "method_share": passes["method"] / retrain_passes if retrain_passes else None,
        }
    return {
        "sample_passes": passes,
        "train_split_samples": train_size,
        "epoch_equivalents": {k: v / train_size if train_size else None for k, v in passes.items()},
        "retrain": retrain,
    }


@dataclass
class Outcome:
    """What a recipe hands back: the metrics, and the weights when the gate accepted them."""

    metrics: dict[str, Any]
    state: dict[str, torch.Tensor] | None
    failures: list[dict[str, Any]]
    # Files beside the checkpoint, by name: (media type, content). Kept for rejected jobs too.
    artifacts: dict[str, tuple[str, bytes]] = field(default_factory=dict)


def forget_mask(
    train: data.ImageSource, classes: list[int] | None, samples: list[str] | None
) -> np.ndarray:
    """Which training samples a request names: every one of its classes, or its sample ids."""
    if classes is not None:
        return np.isin(train.targets, classes)
    named = set(samples or ())
    return np.fromiter((i in named for i in train.ids), dtype=bool, count=len(train))


def retrain_epochs(job: JobSpec) -> float | None:
    """How long a retrain would train: as the original was, when its owner said; else the
    request's reference, if it has one."""
    if job.training:
        return float(job.training["epochs"])
    if job.reference:
        return float(job.reference["params"]["epochs"])
    return None


def forget_split(train: data.ImageSource, job: JobSpec) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the forget and retain training samples. Data that earlier requests in the
    version's lineage forgot is in neither: it is not this request's to forget, and retaining
    it would teach it back."""
    forget = forget_mask(train, job.forget_classes, job.forget_samples)
    if job.forget_classes is None:
        named = set(job.forget_samples or ())
        if int(forget.sum()) != len(named):
            raise data.DatasetError(
                "samples_missing",
                f"{len(named) - int(forget.sum())} forget samples are no longer in the dataset",
            )
    earlier = np.isin(train.targets, job.earlier_forget_classes)
    if job.earlier_forget_samples:
        gone = set(job.earlier_forget_samples)
        earlier |= np.fromiter((i in gone for i in train.ids), dtype=bool, count=len(train))
    return np.flatnonzero(forget), np.flatnonzero(~forget & ~earlier)


def forget_summary(job: JobSpec, forget_idx: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """What the request forgets; ``class_names`` are the model's (classifiers) or the dataset's
    (image-to-image models, which have none)."""
    if job.forget_classes is not None:
        return {
            "kind": "classes",
            "classes": job.forget_classes,
            "class_names": [class_names[c] for c in job.forget_classes],
            "train_samples": len(forget_idx),
        }
    return {"kind": "samples", "train_samples": len(forget_idx)}


class UnlearningDiverged(RuntimeError):
    """The method produced weights that are not finite numbers."""


def refuse_diverged(model: torch.nn.Module) -> None:
    bad = [
        name
        for name, t in model.state_dict().items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise UnlearningDiverged(
            f"the unlearned weights hold NaN or infinite values ({', '.join(bad[:3])}); "
            "lower the method's learning rates"
        )


def environment(device: torch.device) -> dict[str, str]:
    """Enough to reproduce a result: versions of everything that computes, and the device."""
    return {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "deterministic_algorithms": str(torch.are_deterministic_algorithms_enabled()),
    }
