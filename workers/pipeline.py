"""One classifier unlearning job, from stored weights to a new stored version and its evidence.

The database is touched only at the edges (load the job's context, store the outcome), each in
its own short transaction; the heavy work in between is plain torch from ``unlearning``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import Any

import numpy as np
import sklearn
import torch
import torchvision
from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.config import get_settings
from app.datasets.service import resolve_location
from app.db import session_scope
from app.deletions import evidence
from app.jobs import states
from app.models import lineage
from app.models import service as models
from app.orm import (
    Dataset,
    DeletionRequest,
    Job,
    JobArtifact,
    JobStatus,
    Model,
    ModelVersion,
    utcnow,
)
from app.signing import json_value
from app.storage import StoredObject, get_store
from unlearning import acceptance, architectures, checkpoints, data, verify
from unlearning.methods import METHODS, UnlearningTask
from unlearning.methods.reference import RetrainConfig
from workers.progress import ProgressReporter

log = logging.getLogger(__name__)

EVAL_SEED = 0  # the evaluation groups are the same for every job on the same data


@dataclass(frozen=True)
class JobContext:
    job_id: str
    request_id: str
    method: str
    params: dict[str, Any]
    forget_classes: list[int] | None
    forget_samples: list[str] | None
    acceptance: dict[str, Any]
    reference: dict[str, Any] | None
    measure_relearn_time: bool
    model_id: str
    version_id: str
    storage_key: str
    architecture: str
    architecture_args: dict[str, Any]
    class_names: list[str]
    spec: data.InputSpec
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
    # The worker's claim: the outcome is recorded only while the job still holds it.
    lease: str | None = None


def load_context(job_id: str, lease: str | None = None) -> JobContext:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        request = session.get(DeletionRequest, job.request_id)
        assert request is not None
        version = session.get(ModelVersion, request.model_version_id)
        assert version is not None
        model = session.get(Model, version.model_id)
        dataset = session.get(Dataset, request.dataset_id)
        assert model is not None and dataset is not None
        proxy = (
            session.get(Dataset, request.retain_dataset_id) if request.retain_dataset_id else None
        )
        c, h, w = model.input_shape
        earlier_classes, earlier_samples = earlier_forgets(session, version, dataset.id)
        return JobContext(
            job_id=job.id,
            request_id=request.id,
            method=request.method,
            params=dict(request.params),
            forget_classes=request.forget_classes,
            forget_samples=request.forget_samples,
            acceptance=request.acceptance or _default_acceptance(request),
            reference=request.reference,
            measure_relearn_time=request.measure_relearn_time,
            model_id=model.id,
            version_id=version.id,
            storage_key=version.storage_key,
            architecture=model.architecture,
            architecture_args=dict(model.architecture_args),
            class_names=list(model.class_names),
            spec=data.InputSpec(
                (c, h, w), tuple(model.normalization["mean"]), tuple(model.normalization["std"])
            ),
            dataset_kind=dataset.kind,
            dataset_location=resolve_location(dataset.location),
            task=model.task,
            encoder=model.encoder,
            transform=model.transform,
            dataset_class_names=list(dataset.class_names),
            retain_dataset_id=proxy.id if proxy else None,
            earlier_forget_classes=earlier_classes,
            earlier_forget_samples=earlier_samples,
            retain_dataset_kind=proxy.kind if proxy else None,
            retain_dataset_location=resolve_location(proxy.location) if proxy else None,
            lease=lease,
        )


def _default_acceptance(request: DeletionRequest) -> dict[str, Any]:
    """Thresholds for requests recorded before thresholds existed: the defaults of their kind."""
    kind = "classes" if request.forget_classes is not None else "samples"
    return dataclasses.asdict(acceptance.DEFAULTS[kind])


def pick_device() -> torch.device:
    wanted = get_settings().device
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(wanted)


@dataclass
class Cost:
    """Wall time per phase, and samples through the model (forward+backward, or forward only)."""

    seconds: dict[str, float] = field(default_factory=dict)
    trained: dict[str, int] = field(default_factory=dict)
    forward: int = 0

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


@dataclass
class Outcome:
    """What ``run`` hands to ``store_outcome``: the metrics, and the weights when accepted."""

    metrics: dict[str, Any]
    state: dict[str, torch.Tensor] | None
    failures: list[dict[str, Any]]
    # Files beside the checkpoint, by name: (media type, content). Kept for rejected jobs too.
    artifacts: dict[str, tuple[str, bytes]] = field(default_factory=dict)


def earlier_forgets(
    session: Session, version: ModelVersion, dataset_id: str
) -> tuple[list[int], list[str]]:
    """Classes and samples of ``dataset_id`` that the requests which produced ``version`` and its
    ancestors forgot."""
    classes: set[int] = set()
    samples: set[str] = set()
    for v in [version, *lineage.ancestors(session, version)]:
        earlier = (
            session.get(DeletionRequest, v.produced_by_request_id)
            if v.produced_by_request_id
            else None
        )
        if earlier is not None and earlier.dataset_id == dataset_id:
            classes.update(earlier.forget_classes or ())
            samples.update(earlier.forget_samples or ())
    return sorted(classes), sorted(samples)


def forget_split(train: data.ImageSource, ctx: JobContext) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the forget and retain training samples. Data that earlier requests in the
    version's lineage forgot is in neither: it is not this request's to forget, and retaining
    it would teach it back."""
    if ctx.forget_classes is not None:
        forget = np.isin(train.targets, ctx.forget_classes)
    else:
        named = set(ctx.forget_samples or ())
        forget = np.fromiter((i in named for i in train.ids), dtype=bool, count=len(train))
        if int(forget.sum()) != len(named):
            raise data.DatasetError(
                "samples_missing",
                f"{len(named) - int(forget.sum())} forget samples are no longer in the dataset",
            )
    earlier = np.isin(train.targets, ctx.earlier_forget_classes)
    if ctx.earlier_forget_samples:
        gone = set(ctx.earlier_forget_samples)
        earlier |= np.fromiter((i in gone for i in train.ids), dtype=bool, count=len(train))
    return np.flatnonzero(forget), np.flatnonzero(~forget & ~earlier)


def job_plan(ctx: JobContext) -> list[tuple[str, float]]:
    plan = [("load", 0.5), ("evaluate_before", 1.0)]
    if ctx.reference:
        plan.append(("reference", 10.0))
    plan += list(METHODS[ctx.method].phases)
    plan += [("evaluate", 1.0), ("extra_repair", 0.5)]
    if ctx.measure_relearn_time:
        plan.append(("relearn", 3.0))
    return [*plan, ("save", 0.3)]


def run(ctx: JobContext, report: ProgressReporter) -> Outcome:
    """Measure, unlearn, measure again, apply the acceptance gate; nothing is stored here."""
    device, cost = pick_device(), Cost()
    report.set_plan(job_plan(ctx))
    report("load", 0.0)
    with cost.phase("load"):
        model = _load_model(ctx)
        original = copy.deepcopy(model).to(device)
        train, test = data.open_splits(
            ctx.dataset_kind, ctx.dataset_location, size=ctx.spec.shape[1:]
        )
        forget_idx, retain_idx = forget_split(train, ctx)
        sets = verify.eval_sets(
            train,
            test,
            forget_idx,
            retain_idx,
            ctx.forget_classes,
            ctx.class_names,
            seed=EVAL_SEED,
            excluded_classes=ctx.earlier_forget_classes,
        )
    task = UnlearningTask(
        model,
        train,
        forget_idx,
        retain_idx,
        ctx.forget_classes,
        len(ctx.class_names),
        ctx.spec,
        device,
        report,
        fresh_model=lambda: _fresh(ctx),
    )

    report("evaluate_before", 0.0)
    before = _measure(original, sets, ctx, device, cost, "evaluate_before")
    reference_model, reference = _reference(ctx, task, sets, cost, report)

    method = METHODS[ctx.method]
    config = method.config_type(**ctx.params)
    result = method.run(task, config)
    cost.add(result.phase_seconds, result.samples_processed)
    refuse_diverged(model)
    report("evaluate", 0.0)
    after = _measure(model, sets, ctx, device, cost, "evaluate")

    thresholds = acceptance.Thresholds(**ctx.acceptance)
    failed = acceptance.failures(thresholds, before, after, reference)
    extra = 0
    limit = int(ctx.params.get(method.heal_limit_param, 0)) if method.heal_limit_param else 0
    # Only more repair can help a retain shortfall; forgetting is not bought back this way.
    healing = replace(task, progress=lambda _phase, f: report("extra_repair", (extra + f) / limit))
    while method.heal and extra < limit and failed and only_retain_short(failed):
        with cost.phase("extra_repair"):
            cost.trained["extra_repair"] = cost.trained.get("extra_repair", 0) + method.heal(
                healing, config, extra
            )
        extra += 1
        refuse_diverged(model)
        after = _measure(model, sets, ctx, device, cost, "evaluate")
        failed = acceptance.failures(thresholds, before, after, reference)

    metrics: dict[str, Any] = {
        "method": ctx.method,
        "params": ctx.params,
        "forget": forget_summary(ctx, forget_idx, ctx.class_names),
        "acceptance": {
            "thresholds": ctx.acceptance,
            "passed": not failed,
            "failures": failed,
            "extra_repair_epochs": extra,
        },
        "before": before,
        "after": after,
        "reference": reference,
        "gap_to_reference": verify.gaps(after, reference) if reference else None,
        "original_gap_to_reference": verify.gaps(before, reference) if reference else None,
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
    if ctx.measure_relearn_time:
        report("relearn", 0.0)
        with cost.phase("relearn"):
            metrics["relearn_time"] = _relearn(
                model, original, reference_model, before, sets, ctx, device, report
            )
    metrics["phase_seconds"] = cost.seconds
    metrics["samples_processed"] = {**cost.trained, "forward_only": cost.forward}
    report("save", 0.0)
    return Outcome(metrics, None if failed else model.state_dict(), failed)


def only_retain_short(failed: list[dict[str, Any]]) -> bool:
    return all(f["check"] == "max_retain_drop" for f in failed)


def _load_model(ctx: JobContext) -> torch.nn.Module:
    model = _fresh(ctx)
    checkpoints.load_into(model, checkpoints.load_file(get_store().local_path(ctx.storage_key)))
    return model


def _fresh(ctx: JobContext) -> torch.nn.Module:
    return architectures.build_classifier(
        ctx.architecture, len(ctx.class_names), ctx.architecture_args
    )


def _measure(
    model: torch.nn.Module,
    sets: verify.EvalSets,
    ctx: JobContext,
    device: torch.device,
    cost: Cost,
    phase: str,
) -> dict[str, Any]:
    with cost.phase(phase):
        report = verify.measure(model, sets, ctx.spec, device)
    cost.forward += verify.forward_samples(report)
    return report


def _reference(
    ctx: JobContext,
    task: UnlearningTask,
    sets: verify.EvalSets,
    cost: Cost,
    report: ProgressReporter,
) -> tuple[torch.nn.Module | None, dict[str, Any] | None]:
    """The retrained reference model and its measurements, when the request asked for one."""
    if not ctx.reference:
        return None, None
    config = RetrainConfig(**ctx.reference["params"])
    reference_model = _fresh(ctx).to(task.device)
    ref_task = replace(
        task, model=reference_model, progress=lambda _phase, f: report("reference", f)
    )
    result = METHODS["retrain"].run(ref_task, config)
    cost.add(result.phase_seconds, result.samples_processed, prefix="reference_")
    measured = _measure(reference_model, sets, ctx, task.device, cost, "reference_evaluate")
    return reference_model, {**measured, "method": "retrain", "params": ctx.reference["params"]}


def _relearn(
    model: torch.nn.Module,
    original: torch.nn.Module,
    reference: torch.nn.Module | None,
    before: dict[str, Any],
    sets: verify.EvalSets,
    ctx: JobContext,
    device: torch.device,
    report: ProgressReporter,
) -> dict[str, Any]:
    """Relearn time of the unlearned model, beside the original's and the reference's."""
    config = verify.RelearnConfig(seed=int(ctx.params.get("seed", 0)))
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

        measured[name] = verify.relearn_time(subject, sets, ctx.spec, target, device, config, tick)
    return measured


def forget_summary(
    ctx: JobContext, forget_idx: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """What the request forgets; ``class_names`` are the model's (classifiers) or the dataset's
    (image-to-image models, which have none)."""
    if ctx.forget_classes is not None:
        return {
            "kind": "classes",
            "classes": ctx.forget_classes,
            "class_names": [class_names[c] for c in ctx.forget_classes],
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


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The figures an audit event repeats at its top level."""
    if metrics.get("task") == "image_to_image":
        before, after = metrics["before"], metrics["after"]
        return {
            "retain_psnr_before": before["retain"]["psnr"],
            "retain_psnr_after": after["retain"]["psnr"],
            "forget_psnr_before": before["forget"]["psnr"],
            "forget_psnr_after": after["forget"]["psnr"],
            "frozen_unchanged": metrics["weights"]["frozen_unchanged"],
            "acceptance": metrics["acceptance"],
        }
    before, after = metrics["before"], metrics["after"]
    return {
        "forget_accuracy_before": before["forget_accuracy"],
        "forget_accuracy_after": after["forget_accuracy"],
        "retain_accuracy_before": before["retain_accuracy"],
        "retain_accuracy_after": after["retain_accuracy"],
        "entropy_mia_forget_before": before["mia"]["entropy"]["forget_member_rate"],
        "entropy_mia_forget_after": after["mia"]["entropy"]["forget_member_rate"],
        "acceptance": metrics["acceptance"],
    }


def _suffix(media_type: str) -> str:
    return {"image/png": ".png"}.get(media_type, ".bin")


def _figure(value: float | None) -> str:
    return "nothing: it could not be measured" if value is None else f"{value:.4f}"


def store_outcome(ctx: JobContext, outcome: Outcome) -> bool:
    """Accepted: write the checkpoint (atomically), then record version and success in one
    transaction. Rejected: record the measured figures and publish nothing."""
    metrics = outcome.metrics
    written: list[str] = []  # objects this job created, removed again unless it is recorded
    moved = False
    try:
        stored = None
        if outcome.state is not None:
            start = time.perf_counter()
            stored = _put(checkpoints.canonical_bytes(outcome.state), ".safetensors", written)
            metrics["phase_seconds"]["save"] = time.perf_counter() - start
        files = {
            name: (media, _put(content, _suffix(media), written))
            for name, (media, content) in outcome.artifacts.items()
        }
        metrics["total_seconds"] = sum(metrics["phase_seconds"].values())
        record = partial(_record_outcome, ctx, outcome, json_value(metrics), stored, files)
        moved = _waiting_out_the_database(record, ctx.job_id)
    finally:
        if not moved:  # failed (a full disk), or the job ended elsewhere: publish nothing
            _discard_unreferenced(written)
    return moved


def _put(data: bytes, suffix: str, written: list[str]) -> StoredObject:
    stored = get_store().put_bytes(data, suffix)
    if stored.created:
        written.append(stored.key)
    return stored


def _waiting_out_the_database(record: Callable[[], bool], job_id: str, tries: int = 4) -> bool:
    """``record()``, tried again while the database is briefly down (a restart): the work is
    done and a lost connection should not throw it away."""
    for attempt in range(1, tries):
        try:
            return record()
        except (OperationalError, InterfaceError):
            log.warning(
                "job %s: the database is unreachable; recording again in %d s",
                job_id,
                2**attempt,
                exc_info=True,
            )
            time.sleep(2**attempt)
    return record()  # the last try: its error is the job's


def _discard_unreferenced(keys: list[str]) -> None:
    """Remove files that no version and no job refer to: the checkpoint and grid of a job that
    failed while saving or ended elsewhere (the grid shows images of the forget classes, and
    nothing of it should outlive the job). Only files this job created are passed in, so a file
    another job or version stored with the same bytes is kept."""
    if not keys:
        return
    try:
        with session_scope() as session:
            kept = set(
                session.scalars(
                    select(JobArtifact.storage_key)
                    .where(JobArtifact.storage_key.in_(keys))
                    .union(
                        select(ModelVersion.storage_key).where(ModelVersion.storage_key.in_(keys))
                    )
                )
            )
        for key in set(keys) - kept:
            get_store().delete(key)
    except Exception:  # the failure being handled matters more: leave an unreferenced file
        log.warning("could not remove the unreferenced files %s", keys, exc_info=True)


def conclude(
    session: Session, job: Job, output: ModelVersion, metrics: dict[str, Any], at: datetime
) -> list[str]:
    """A succeeded request's evidence: the signed certificate, and the versions that still hold
    the forgotten data marked superseded. Returns the ids of the versions marked."""
    request = session.get(DeletionRequest, job.request_id)
    source = session.get(ModelVersion, output.parent_version_id)
    assert request is not None and source is not None
    session.flush()  # the output version's id and the job's attempts, as the certificate names
    evidence.issue_certificate(request, job, source, output, metrics, at)
    return [v.id for v in lineage.supersede(session, source, output, request.id, at)]


def _record_outcome(
    ctx: JobContext,
    outcome: Outcome,
    metrics: dict[str, Any],
    stored: StoredObject | None,
    files: dict[str, tuple[str, StoredObject]],
) -> bool:
    """Version (when accepted), artifacts and the job's last transition, in one transaction."""
    with session_scope() as session:
        job = session.get(Job, ctx.job_id)
        # Locked: two requests on one source that finish together must not both miss the
        # other's supersession mark (SQLite's write lock already serialises them).
        model = session.get(Model, ctx.model_id, with_for_update=True)
        assert job is not None and model is not None
        for name, (media, obj) in files.items():
            session.add(
                JobArtifact(
                    job_id=job.id,
                    name=name,
                    media_type=media,
                    storage_key=obj.key,
                    sha256=obj.sha256,
                    size_bytes=obj.size,
                )
            )
        details = {
            **headline(metrics),
            "metrics": metrics,
            "artifacts": {n: obj.sha256 for n, (_, obj) in files.items()},
        }
        if stored is None:
            checks = ", ".join(
                f"{f['check']} (measured {_figure(f['measured'])}, threshold {f['threshold']})"
                for f in outcome.failures
            )
            moved = states.transition(
                session,
                job,
                JobStatus.rejected,
                lease=ctx.lease,
                reason=f"the result missed the acceptance thresholds: {checks}",
                values={"metrics": metrics, "progress": 1.0, "phase": "save"},
                details=details,
            )
        else:
            version = models.add_version(
                session,
                model,
                stored.key,
                stored.sha256,
                stored.size,
                "safetensors",
                parent_version_id=ctx.version_id,
                produced_by_request_id=ctx.request_id,
            )
            now = utcnow()
            superseded = conclude(session, job, version, metrics, now)
            details["superseded_version_ids"] = superseded
            moved = states.transition(
                session,
                job,
                JobStatus.succeeded,
                reason="unlearning finished",
                lease=ctx.lease,
                values={
                    "metrics": metrics,
                    "output_version_id": version.id,
                    "progress": 1.0,
                    "phase": "save",
                    "finished_at": now,
                },
                details={
                    "output_version_id": version.id,
                    "output_sha256": stored.sha256,
                    **details,
                },
            )
        if not moved:
            # Someone else ended the job meanwhile: roll back, so no version is published.
            session.rollback()
        return moved
