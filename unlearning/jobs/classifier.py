"""One classifier unlearning job: measure, unlearn, gate, heal, measure relearn time.

Handed the job's spec, the stored weights' path, a device and a progress callable; it reads the
dataset itself and stores nothing.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unlearning import acceptance, architectures, checkpoints, verify
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
from unlearning.methods import METHODS, UnlearningTask, costs
from unlearning.methods.reference import RetrainConfig


def job_plan(job: JobSpec) -> list[tuple[str, float]]:
    plan = [("load", 0.5), ("evaluate_before", 1.0)]
    if job.reference:
        plan.append(("reference", 10.0))
    plan += list(METHODS[job.method].phases)
    plan += [("evaluate", 1.0), ("extra_repair", 0.5)]
    if job.measure_relearn_time:
        plan.append(("relearn", 3.0))
    return [*plan, ("save", 0.3)]


def run(job: JobSpec, weights: Path, device: torch.device, report: JobProgress) -> Outcome:
    """Measure, unlearn, measure again, apply the acceptance gate; nothing is stored here."""
    cost = Cost()
    report.set_plan(job_plan(job))
    report("load", 0.0)
    loading = Cost()  # the parts of "load", for metrics["load_seconds"]
    with cost.phase("load"):
        with loading.phase("architecture"):
            model, built = cache.network(architecture_spec(job), lambda: fresh_model(job))
        with loading.phase("weights"):
            checkpoints.load_into(model, checkpoints.load_file(weights))
            original = copy.deepcopy(model).to(device)
        with loading.phase("dataset"):
            (train, test), read = cache.open_splits(
                job.dataset_kind, job.dataset_location, job.input_spec.shape[1:], job.dataset_id
            )
        with loading.phase("eval_sets"):
            forget_idx, retain_idx = forget_split(train, job)
            sets = verify.eval_sets(
                train,
                test,
                forget_idx,
                retain_idx,
                job.forget_classes,
                job.class_names,
                seed=EVAL_SEED,
                excluded_classes=job.earlier_forget_classes,
            )
    task = UnlearningTask(
        model,
        train,
        forget_idx,
        retain_idx,
        job.forget_classes,
        len(job.class_names),
        job.input_spec,
        device,
        report,
        fresh_model=lambda: fresh_model(job),
        importance_cache=Path(job.importance_cache) if job.importance_cache else None,
        member_gap=_member_gap(sets, job, device) if job.forget_samples is not None else None,
    )

    report("evaluate_before", 0.0)
    before = _measure(original, sets, job, device, cost, "evaluate_before")
    reference_model, reference = _reference(job, task, sets, cost, report)

    thresholds = acceptance.Thresholds(**job.acceptance)
    checked: list[dict[str, Any]] = []
    task = replace(task, accept=_gate_check(sets, job, device, thresholds, before, checked, cost))
    method = METHODS[job.method]
    config = method.config_type(**job.params)
    result = method.run(task, config)
    cost.add(result.phase_seconds, result.samples_processed)
    cost.forward += result.forward_samples + result.check_samples
    cost.method_forward += result.forward_samples
    refuse_diverged(model)
    report("evaluate", 0.0)
    if result.final_checked and checked:
        after = checked[-1]  # measured on these very weights by the method's last gate check
    else:
        after = _measure(model, sets, job, device, cost, "evaluate")

    decided = acceptance.checks(thresholds, before, after, reference)
    extra = 0
    limit = int(job.params.get(method.heal_limit_param, 0)) if method.heal_limit_param else 0
    # Only more repair can help a retain shortfall; forgetting is not bought back this way.
    healing = replace(task, progress=lambda _phase, f: report("extra_repair", (extra + f) / limit))
    while method.heal and extra < limit and only_retain_short(acceptance.failed(decided)):
        with cost.phase("extra_repair"):
            cost.trained["extra_repair"] = cost.trained.get("extra_repair", 0) + method.heal(
                healing, config, extra
            )
        extra += 1
        refuse_diverged(model)
        after = _measure(model, sets, job, device, cost, "evaluate")
        decided = acceptance.checks(thresholds, before, after, reference)
    failed = acceptance.failed(decided)

    metrics: dict[str, Any] = {
        "method": job.method,
        "params": dataclasses.asdict(config),
        "forget": forget_summary(job, forget_idx, job.class_names),
        "acceptance": {
            "thresholds": job.acceptance,
            "passed": not failed,
            "failures": failed,
            "checks": decided,
            "extra_repair_epochs": extra,
        },
        "before": before,
        "after": after,
        "reference": reference,
        "gap_to_reference": verify.gaps(after, reference) if reference else None,
        "original_gap_to_reference": verify.gaps(before, reference) if reference else None,
        "forget_confusion": verify.confusion_against_second_choice(before, after, reference),
        "feature_probe": verify.probe_summary(before, after, reference),
        "weight_distance": {
            "to_original": verify.weight_distance(model, original),
            "to_reference": (
                verify.weight_distance(model, reference_model) if reference_model else None
            ),
        },
        "relearn_time": None,
        "method_details": result.details,
        "environment": environment(device),
    }
    if job.measure_relearn_time:
        report("relearn", 0.0)
        with cost.phase("relearn"):
            metrics["relearn_time"] = _relearn(
                model, original, reference_model, before, sets, job, device, report
            )
        cost.evaluation_trained += sum(
            m["samples_processed"] for k, m in metrics["relearn_time"].items() if k != "protocol"
        )
    metrics["phase_seconds"] = cost.seconds
    metrics["load_seconds"] = loading.seconds
    metrics["worker_cache"] = {"architecture": built, "dataset": read}
    metrics["samples_processed"] = {**cost.trained, "forward_only": cost.forward}
    metrics["cost"] = cost_summary(cost, len(train), len(retain_idx), retrain_epochs(job))
    metrics["cost"]["budget_epochs"] = job.budget_epochs
    metrics["cost"]["estimated_method_passes"] = method.estimate(
        config,
        costs.sizes_of(
            len(train),
            len(forget_idx),
            np.asarray(train.targets)[retain_idx],
            len(job.forget_classes or ()),
        ),
    )
    report("save", 0.0)
    return Outcome(metrics, None if failed else model.state_dict(), failed)


def _member_gap(
    sets: verify.EvalSets, job: JobSpec, device: torch.device
) -> Callable[[torch.nn.Module], tuple[float | None, int]]:
    def gap(model: torch.nn.Module) -> tuple[float | None, int]:
        refuse_diverged(model)  # a NaN model has no member rate to compare
        return verify.forget_member_gap(model, sets, job.input_spec, device)

    return gap


def _gate_check(
    sets: verify.EvalSets,
    job: JobSpec,
    device: torch.device,
    thresholds: acceptance.Thresholds,
    before: dict[str, Any],
    measured: list[dict[str, Any]],
    cost: Cost,
) -> Callable[[torch.nn.Module], tuple[list[dict[str, Any]], int]]:
    """The job's gate on a model, for methods that escalate: never against the reference,
    which a method must not need. Each measurement is appended to ``measured``."""

    def accept(model: torch.nn.Module) -> tuple[list[dict[str, Any]], int]:
        refuse_diverged(model)
        with cost.phase("evaluate"):  # its samples come back as the method's check_samples
            after = verify.measure(model, sets, job.input_spec, device)
        measured.append(after)
        return acceptance.failures(thresholds, before, after, None), verify.forward_samples(after)

    return accept


def only_retain_short(failed: list[dict[str, Any]]) -> bool:
    """Some check failed, and each one that did is the retain drop."""
    return bool(failed) and all(f["check"] == "max_retain_drop" for f in failed)


def architecture_spec(job: JobSpec) -> dict[str, Any]:
    """Everything ``fresh_model`` builds from: what the worker's cache keys a network by."""
    return {
        "task": job.task,
        "architecture": job.architecture,
        "num_classes": len(job.class_names),
        "args": job.architecture_args,
        "input_shape": list(job.input_spec.shape),
    }


def fresh_model(job: JobSpec) -> torch.nn.Module:
    """A freshly initialised network of the job's architecture."""
    return architectures.build_classifier(
        job.architecture, len(job.class_names), job.architecture_args, job.input_spec.shape
    )


def _measure(
    model: torch.nn.Module,
    sets: verify.EvalSets,
    job: JobSpec,
    device: torch.device,
    cost: Cost,
    phase: str,
) -> dict[str, Any]:
    with cost.phase(phase):
        report = verify.measure(model, sets, job.input_spec, device)
    cost.forward += verify.forward_samples(report)
    return report


def _reference(
    job: JobSpec,
    task: UnlearningTask,
    sets: verify.EvalSets,
    cost: Cost,
    report: JobProgress,
) -> tuple[torch.nn.Module | None, dict[str, Any] | None]:
    """The retrained reference model and its measurements, when the request asked for one."""
    if not job.reference:
        return None, None
    config = RetrainConfig(**job.reference["params"])
    reference_model = fresh_model(job).to(task.device)
    ref_task = replace(
        task, model=reference_model, progress=lambda _phase, f: report("reference", f)
    )
    result = METHODS["retrain"].run(ref_task, config)
    cost.add(result.phase_seconds, result.samples_processed, prefix="reference_")
    measured = _measure(reference_model, sets, job, task.device, cost, "reference_evaluate")
    return reference_model, {**measured, "method": "retrain", "params": job.reference["params"]}


def _relearn(
    model: torch.nn.Module,
    original: torch.nn.Module,
    reference: torch.nn.Module | None,
    before: dict[str, Any],
    sets: verify.EvalSets,
    job: JobSpec,
    device: torch.device,
    report: JobProgress,
) -> dict[str, Any]:
    """Relearn time of the unlearned model, beside the original's and the reference's."""
    config = verify.RelearnConfig(seed=int(job.params.get("seed", 0)))
    target = config.tau * (before["forget_accuracy"] or 0.0)
    models = {"unlearned": model, "original": original}
    if reference is not None:
        models["reference"] = reference
    measured: dict[str, Any] = {
        "protocol": {
            "optimizer": "adam",
            "lr": config.lr,
            "batch_size": config.batch_size,
            "samples_per_class": config.per_class,
            "tau": config.tau,
            "max_epochs": config.max_epochs,
            "target_accuracy": target,
        },
    }
    for k, (name, subject) in enumerate(models.items()):
        # Progress (and so a cancel check) every epoch, spread over the models measured.
        def tick(_phase: str, f: float, k: int = k) -> None:
            report("relearn", (k + f) / len(models))

        measured[name] = verify.relearn_time(
            subject, sets, job.input_spec, target, device, config, tick
        )
    return measured
