"""One classifier unlearning job, from stored weights to a new stored version.

The database is touched only at the edges (load the job's context, store the result), each in its
own short transaction; the heavy work in between is plain torch from ``unlearning``.
"""

from __future__ import annotations

import copy
import math
import platform
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision

from app.config import get_settings
from app.datasets.service import resolve_location
from app.db import session_scope
from app.jobs import states
from app.models import service as models
from app.orm import Dataset, DeletionRequest, Job, JobStatus, Model, ModelVersion
from app.storage import get_store
from unlearning import architectures, checkpoints, data
from unlearning.evaluate import accuracy_report, count_correct
from unlearning.methods.unsir import RetainSubset, UnsirConfig, unsir
from workers.progress import ProgressReporter


@dataclass(frozen=True)
class JobContext:
    job_id: str
    request_id: str
    method: str
    params: dict[str, Any]
    forget_classes: list[int]
    model_id: str
    version_id: str
    storage_key: str
    architecture: str
    architecture_args: dict[str, Any]
    class_names: list[str]
    spec: data.InputSpec
    dataset_kind: str
    dataset_location: str | None


def load_context(job_id: str) -> JobContext:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        request = session.get(DeletionRequest, job.request_id)
        assert request is not None and request.forget_classes is not None
        version = session.get(ModelVersion, request.model_version_id)
        assert version is not None
        model = session.get(Model, version.model_id)
        dataset = session.get(Dataset, request.dataset_id)
        assert model is not None and dataset is not None
        c, h, w = model.input_shape
        return JobContext(
            job_id=job.id, request_id=request.id, method=request.method,
            params=dict(request.params), forget_classes=list(request.forget_classes),
            model_id=model.id, version_id=version.id, storage_key=version.storage_key,
            architecture=model.architecture, architecture_args=dict(model.architecture_args),
            class_names=list(model.class_names),
            spec=data.InputSpec(
                (c, h, w), tuple(model.normalization["mean"]), tuple(model.normalization["std"])
            ),
            dataset_kind=dataset.kind, dataset_location=resolve_location(dataset.location),
        )  # fmt: skip


def pick_device() -> torch.device:
    wanted = get_settings().device
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(wanted)


def run(ctx: JobContext, report: ProgressReporter) -> dict[str, Any]:
    """Unlearn, evaluate before and after, store the result; returns the job's metrics."""
    device = pick_device()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    model = architectures.build_classifier(
        ctx.architecture, len(ctx.class_names), ctx.architecture_args
    )
    checkpoints.load_into(model, checkpoints.load_file(get_store().path(ctx.storage_key)))
    original = copy.deepcopy(model)
    size = ctx.spec.shape[1:]
    train, test = data.open_splits(ctx.dataset_kind, ctx.dataset_location, size=size)
    config = UnsirConfig(**ctx.params)
    retain_classes = [c for c in range(len(ctx.class_names)) if c not in ctx.forget_classes]
    retain_idx = data.sample_per_class(
        train.targets, retain_classes, config.retain_per_class, config.seed
    )
    timings["load"] = time.perf_counter() - start

    result = unsir(
        model, ctx.forget_classes, RetainSubset(train, retain_idx), ctx.spec, config,
        device=device, progress=report,
    )  # fmt: skip
    timings.update(result.phase_seconds)
    refuse_diverged(model)

    start = time.perf_counter()
    report("evaluate", 0.0)
    everything = np.arange(len(test))
    n = len(ctx.class_names)
    before = count_correct(original.to(device), test, everything, ctx.spec, n, device)
    report("evaluate", 0.5)
    after = count_correct(model, test, everything, ctx.spec, n, device)
    timings["evaluate"] = time.perf_counter() - start

    report("save", 0.0)
    return {
        "method": ctx.method,
        "params": ctx.params,
        "forget_classes": ctx.forget_classes,
        "forget_class_names": [ctx.class_names[c] for c in ctx.forget_classes],
        "evaluation_split": "test",
        "before": accuracy_report(before, ctx.forget_classes, ctx.class_names),
        "after": accuracy_report(after, ctx.forget_classes, ctx.class_names),
        "retain_subset_size": len(retain_idx),
        "samples_processed": result.samples_processed,
        "noise_final_loss": {ctx.class_names[c]: v for c, v in result.noise_loss.items()},
        "phase_seconds": timings,
        "environment": environment(device),
        "_state": model.state_dict(),
    }


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
            "lower impair_lr, repair_lr or noise_lr"
        )


def json_safe(value: Any) -> Any:
    """Metrics as JSON the database accepts: non-finite floats become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def environment(device: torch.device) -> dict[str, str]:
    return {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
    }


def store_result(ctx: JobContext, metrics: dict[str, Any]) -> bool:
    """Write the checkpoint (atomically), then record version and success in one transaction."""
    start = time.perf_counter()
    state = metrics.pop("_state")
    stored = get_store().put_bytes(checkpoints.canonical_bytes(state), ".safetensors")
    metrics["phase_seconds"]["save"] = time.perf_counter() - start
    metrics["total_seconds"] = sum(metrics["phase_seconds"].values())
    metrics = json_safe(metrics)
    with session_scope() as session:
        job = session.get(Job, ctx.job_id)
        model = session.get(Model, ctx.model_id)
        assert job is not None and model is not None
        version = models.add_version(
            session, model, stored.key, stored.sha256, stored.size, "safetensors",
            parent_version_id=ctx.version_id, produced_by_request_id=ctx.request_id,
        )  # fmt: skip
        moved = states.transition(
            session, job, JobStatus.succeeded, reason="unlearning finished",
            values={
                "metrics": metrics, "output_version_id": version.id,
                "progress": 1.0, "phase": "save",
            },
            details={
                "output_version_id": version.id, "output_sha256": stored.sha256,
                "forget_accuracy_before": metrics["before"]["forget_accuracy"],
                "forget_accuracy_after": metrics["after"]["forget_accuracy"],
                "retain_accuracy_before": metrics["before"]["retain_accuracy"],
                "retain_accuracy_after": metrics["after"]["retain_accuracy"],
            },
        )  # fmt: skip
        if not moved:
            # Someone else ended the job meanwhile: roll back, so no version is published.
            session.rollback()
        return moved
