"""One image-to-image unlearning job: measure completions, train the encoder, measure again,
apply the acceptance gate and draw the before/after grid. Nothing is stored here."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unlearning import acceptance, checkpoints, data, verify
from unlearning.i2i import architectures, masks
from unlearning.i2i import verify as i2i_verify
from unlearning.jobs import cache
from unlearning.jobs.common import (
    EVAL_SEED,
    Cost,
    JobProgress,
    JobSpec,
    Outcome,
    cost_summary,
    environment,
    forget_split,
    forget_summary,
    refuse_diverged,
    retrain_epochs,
)
from unlearning.methods import METHODS, I2ITask, costs

GRID_NAME = "completions.png"


def job_plan(job: JobSpec) -> list[tuple[str, float]]:
    return [
        ("load", 0.5),
        ("evaluate_before", 1.0),
        *METHODS[job.method].phases,
        ("evaluate", 1.0),
        ("save", 0.3),
    ]


def load_model(job: JobSpec, weights: Path) -> architectures.I2IModel:
    model = architectures.build(job.architecture, job.input_spec.shape, job.architecture_args)
    checkpoints.load_into(model, checkpoints.load_file(weights))
    return model


def retain_data(
    job: JobSpec, train: data.ImageSource, retain_idx: np.ndarray
) -> tuple[data.ImageSource, np.ndarray]:
    """The training data outside the forget set, or the request's proxy retain set (its
    training split, all of it)."""
    if job.retain_dataset_kind is None:
        return train, retain_idx
    proxy = data.open_split(
        job.retain_dataset_kind, job.retain_dataset_location, "train", size=job.input_spec.shape[1:]
    )
    return proxy, np.arange(len(proxy))


def run(job: JobSpec, weights: Path, device: torch.device, report: JobProgress) -> Outcome:
    cost = Cost()
    report.set_plan(job_plan(job))
    report("load", 0.0)
    transform = masks.Transform(**(job.transform or {}))
    with cost.phase("load"):
        model = load_model(job, weights)
        original = copy.deepcopy(model).to(device)
        (train, test), read = cache.open_splits(
            job.dataset_kind, job.dataset_location, job.input_spec.shape[1:], job.dataset_id
        )
        forget_idx, retain_idx = forget_split(train, job)
        retain_source, retain_idx = retain_data(job, train, retain_idx)
        sets = i2i_verify.eval_sets(train, test, forget_idx, job.forget_classes, seed=EVAL_SEED)

    report("evaluate_before", 0.0)
    with cost.phase("evaluate_before"):
        before, before_done = i2i_verify.measure(original, sets, job.input_spec, transform, device)
    task = I2ITask(
        model,
        train,
        forget_idx,
        retain_source,
        retain_idx,
        job.forget_classes,
        job.input_spec,
        transform,
        job.encoder or architectures.default_encoder(model),
        device,
        progress=report,
    )
    method = METHODS[job.method]
    config = method.config_type(**job.params)
    result = method.run(task, config)
    cost.add(result.phase_seconds, result.samples_processed)
    refuse_diverged(model)
    report("evaluate", 0.0)
    with cost.phase("evaluate"):
        after, after_done = i2i_verify.measure(
            model, sets, job.input_spec, transform, device, originals=before_done
        )
    cost.forward += 2 * i2i_verify.forward_samples(before, model.evaluation_passes)
    shown = _may_show_forget(job)
    decided = acceptance.i2i_checks(acceptance.I2IThresholds(**job.acceptance), before, after)
    failed = acceptance.failed(decided)
    metrics: dict[str, Any] = {
        "task": "image_to_image",
        "method": job.method,
        "params": job.params,
        "forget": forget_summary(job, forget_idx, job.dataset_class_names),
        "retain": {
            "source": "proxy dataset" if job.retain_dataset_kind else "training data",
            "dataset_id": job.retain_dataset_id,
            "available_samples": len(retain_idx),
        },
        "acceptance": {
            "thresholds": job.acceptance,
            "passed": not failed,
            "failures": failed,
            "checks": decided,
        },
        "before": before,
        "after": after,
        "change": change(before, after),
        "weights": i2i_verify.weights_unchanged(model, original, task.encoder),
        "weight_distance": {"to_original": verify.weight_distance(model, original)},
        "method_details": result.details,
        "environment": environment(device),
        "artifacts": {GRID_NAME: {"groups": ["retain", "forget"] if shown else ["retain"]}},
        "phase_seconds": cost.seconds,
        "worker_cache": {"dataset": read},
        "samples_processed": {**cost.trained, "forward_only": cost.forward},
        "cost": cost_summary(
            cost,
            len(train),
            len(retain_idx),
            retrain_epochs(job),
        ),
    }
    sizes = costs.sizes_of(
        len(train),
        len(forget_idx),
        np.asarray(retain_source.targets)[retain_idx],
        len(job.forget_classes or ()),
    )
    metrics["cost"]["budget_epochs"] = job.budget_epochs
    metrics["cost"]["estimated_method_passes"] = method.estimate(config, sizes)
    report("save", 0.0)
    grid = i2i_verify.completion_grid(before_done, after_done, show_forget=shown)
    return Outcome(
        metrics,
        None if failed else checkpoints.file_state(model),
        failed,
        artifacts={GRID_NAME: ("image/png", grid)},
    )


def _may_show_forget(job: JobSpec) -> bool:
    """A sample request's forget images are the very data to be erased: keeping pictures of them
    (and of the original model reconstructing them) would defeat the request. Class requests
    show held-out images of the classes, never the training images named for deletion."""
    return job.forget_classes is not None


def change(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """After minus before, per group, for the headline figures."""
    delta: dict[str, Any] = {}
    for group in ("retain", "forget"):
        b, a = before[group], after[group]
        delta[group] = {
            k: (None if b[k] is None or a[k] is None else a[k] - b[k])
            for k in ("psnr", "ssim", "mse", "fd_random", "encoder_cosine")
        }
    return delta
