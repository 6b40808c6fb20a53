"""The database side of a job run: what a job needs, loaded in one short transaction, and its
outcome recorded in another (versions, artifacts, certificate, supersession), waiting out a short
database outage and removing what it stored when nothing came to refer to it."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.config import get_settings
from app.datasets.service import resolve_location
from app.db import session_scope
from app.deletions import evidence, lifecycle, methods
from app.jobs import coalescing, drift, repository, states
from app.models import lineage
from app.models import repository as models_repo
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
from unlearning import acceptance, checkpoints, data, verify
from unlearning.jobs import JobSpec, Outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobContext:
    """One claimed job: the ids its outcome is recorded under, and the spec its recipe runs."""

    job_id: str
    request_id: str
    model_id: str
    version_id: str
    storage_key: str
    job: JobSpec
    # The worker's claim: the outcome is recorded only while the job still holds it.
    lease: str | None = None
    # A joint run (app.jobs.coalescing): its jobs, requests and forget sets, which the
    # metrics of every member repeat; None for a job that runs alone.
    joint: dict[str, Any] | None = None
    # The input's drift and the model's budget (app.jobs.drift).
    drift: drift.DriftPlan | None = None

    def weights_path(self) -> Path:
        """The input checkpoint as a local file (fetched from the store when it is remote)."""
        return get_store().local_path(self.storage_key)


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
        member_requests = [
            session.get(DeletionRequest, m.request_id)
            for m in coalescing.members(session, job.id, lease)
        ]
        together = [request, *(r for r in member_requests if r is not None)]
        forget_classes, forget_samples = union_of(together)
        drift_plan = drift.plan(session, model, version, len(together))
        method, params = request.method, dict(request.params)
        if drift_plan.retrain:  # the budget's retrain is this deletion's method
            method, params = "retrain", methods.retrain_params(model.training)
        spec = JobSpec(
            method=method,
            params=params,
            forget_classes=forget_classes,
            forget_samples=forget_samples,
            acceptance=_gate(request, drift_plan.retrain),
            reference=request.reference,
            measure_relearn_time=request.measure_relearn_time,
            architecture=model.architecture,
            architecture_args=dict(model.architecture_args),
            class_names=list(model.class_names),
            input_spec=data.InputSpec(
                (c, h, w), tuple(model.normalization["mean"]), tuple(model.normalization["std"])
            ),
            dataset_kind=dataset.kind,
            dataset_location=resolve_location(dataset.location),
            task=model.task,
            encoder=model.encoder,
            transform=model.transform,
            dataset_class_names=list(dataset.class_names),
            retain_dataset_id=proxy.id if proxy else None,
            retain_dataset_kind=proxy.kind if proxy else None,
            retain_dataset_location=resolve_location(proxy.location) if proxy else None,
            earlier_forget_classes=earlier_classes,
            earlier_forget_samples=earlier_samples,
            training=model.training,
            budget_epochs=request.budget_epochs,
            importance_cache=_importance_cache(version.id, dataset.id),
            dataset_id=dataset.id,
        )
        return JobContext(
            job_id=job.id,
            request_id=request.id,
            model_id=model.id,
            version_id=version.id,
            storage_key=version.storage_key,
            job=spec,
            lease=lease,
            joint=joint_record(job, together, forget_classes, forget_samples),
            drift=drift_plan,
        )


def union_of(requests: list[DeletionRequest]) -> tuple[list[int] | None, list[str] | None]:
    """The classes and the samples the requests forget together (requests of one run forget
    the same kind), in the order first named."""
    if requests[0].forget_classes is not None:
        return sorted({c for r in requests for c in r.forget_classes or ()}), None
    return None, list(dict.fromkeys(s for r in requests for s in r.forget_samples or ()))


def joint_record(
    job: Job,
    requests: list[DeletionRequest],
    forget_classes: list[int] | None,
    forget_samples: list[str] | None,
) -> dict[str, Any] | None:
    """What every member's metrics and certificate say of a joint run; None for a lone job."""
    if len(requests) == 1:
        return None
    return {
        "job_id": job.id,
        "request_ids": [r.id for r in requests],
        "requests": len(requests),
        "forget_classes": forget_classes,
        "forget_samples_count": len(forget_samples) if forget_samples is not None else None,
    }


def _importance_cache(version_id: str, dataset_id: str) -> str | None:
    """This worker's folder for the version's importances on the dataset: a new version gets a
    new folder, so nothing computed for another version's weights is ever reused."""
    root = get_settings().importance_cache_dir
    return str(root / version_id / dataset_id) if root else None


# What a retrain is judged on when a drift budget runs it: it is the reference the forget-side
# checks compare unlearning with (a retrain's forgotten samples are unseen data, and a small
# forget set of unseen images can sit further from the held-out rate than the allowance), so
# only its fitness for use is checked.
RETRAIN_CHECKS = ("max_retain_drop", "max_retain_psnr_drop")


def _gate(request: DeletionRequest, budget_retrain: bool) -> dict[str, Any]:
    thresholds = dict(request.acceptance or _default_acceptance(request))
    if budget_retrain:
        thresholds = {k: (v if k in RETRAIN_CHECKS else None) for k, v in thresholds.items()}
    return thresholds


def _default_acceptance(request: DeletionRequest) -> dict[str, Any]:
    """Thresholds for requests recorded before thresholds existed: the defaults of their kind."""
    kind = "classes" if request.forget_classes is not None else "samples"
    return dataclasses.asdict(acceptance.DEFAULTS[kind])


def earlier_forgets(
    session: Session, version: ModelVersion, dataset_id: str
) -> tuple[list[int], list[str]]:
    """Classes and samples of ``dataset_id`` that the requests which produced ``version`` and its
    ancestors forgot."""
    classes: set[int] = set()
    samples: set[str] = set()
    lineage_ids = [v.id for v in [version, *lineage.ancestors(session, version)]]
    # Every request a version's job served: a joint run's version forgot all its members' data.
    for earlier in repository.requests_that_produced(session, lineage_ids):
        if earlier.dataset_id == dataset_id:
            classes.update(earlier.forget_classes or ())
            samples.update(earlier.forget_samples or ())
    return sorted(classes), sorted(samples)


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
        timings = metrics.setdefault("timings", {})
        start = time.perf_counter()
        if outcome.state is not None:
            stored = _put(checkpoints.canonical_bytes(outcome.state), ".safetensors", written)
            metrics["phase_seconds"]["save"] = time.perf_counter() - start
        files = {
            name: (media, _put(content, _suffix(media), written))
            for name, (media, content) in outcome.artifacts.items()
        }
        timings["store_s"] = time.perf_counter() - start  # the checkpoint and the artifacts
        if ctx.joint is not None:
            metrics["joint"] = ctx.joint
        if outcome.state is not None and ctx.drift is not None:
            metrics["drift"] = drift_of(ctx.drift, outcome.state, metrics)
        metrics["total_seconds"] = sum(metrics["phase_seconds"].values())
        # From here to the job's last transition: the version, the certificate, the
        # supersession marks, the transition itself and its audit events.
        timings["record_started_at"] = utcnow().isoformat()
        record = partial(_record_outcome, ctx, outcome, json_value(metrics), stored, files)
        moved = _waiting_out_the_database(record, ctx.job_id)
    finally:
        if not moved:  # failed (a full disk), or the job ended elsewhere: publish nothing
            _discard_unreferenced(written)
    return moved


def drift_of(plan: drift.DriftPlan, state: dict[str, Any], metrics: dict[str, Any]) -> Any:
    """The drift record of the version ``state`` will be: its weights against its base's."""
    distance = None
    if not plan.retrain:
        base = checkpoints.load_file(get_store().local_path(plan.base_storage_key))
        distance = verify.state_distance(state, base)
    return drift.record(plan, metrics, distance)


def _put(content: bytes, suffix: str, written: list[str]) -> StoredObject:
    stored = get_store().put_bytes(content, suffix)
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
            kept = repository.referenced_keys(session, keys)
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
    superseded = [v.id for v in lineage.supersede(session, source, output, request.id, at)]
    lifecycle.satisfy_earlier(session, request, at)
    return superseded


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
        model = models_repo.lock_model(session, ctx.model_id)
        assert job is not None and model is not None
        # And the organisation, as an upload does: copies of the source's weights under other
        # models are superseded with it, or the upload of one sees the mark.
        models_repo.lock_organization(session, model.org_id)
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
            reason = f"the result missed the acceptance thresholds: {checks}"
            moved = states.transition(
                session,
                job,
                JobStatus.rejected,
                lease=ctx.lease,
                reason=reason,
                values={"metrics": metrics, "progress": 1.0, "phase": "save"},
                details=details,
            )
            for member in _members(session, ctx, moved):
                states.transition(
                    session,
                    member,
                    JobStatus.rejected,
                    lease=ctx.lease,
                    reason=f"its joint job {job.id}: {reason}",
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
            version.drift = metrics.get("drift")
            now = utcnow()
            moved = _succeed(
                session, job, ctx.lease, "unlearning finished", version, metrics, details, now
            )
            for member in _members(session, ctx, moved):
                reason = f"unlearning finished in joint job {job.id}"
                _succeed(session, member, ctx.lease, reason, version, metrics, details, now)
            if moved:
                drift.announce(session, model, version, ctx.request_id, job.id)
        if not moved:
            # Someone else ended the job meanwhile: roll back, so no version is published.
            session.rollback()
        return moved


def _members(session: Session, ctx: JobContext, leader_moved: bool) -> list[Job]:
    """The jobs joined to the run whose outcome is being recorded (none when it ended
    elsewhere: the transaction is rolled back)."""
    if not leader_moved or ctx.joint is None:
        return []
    return coalescing.members(session, ctx.job_id, ctx.lease)


def _succeed(
    session: Session,
    job: Job,
    lease: str | None,
    reason: str,
    version: ModelVersion,
    metrics: dict[str, Any],
    details: dict[str, Any],
    at: datetime,
) -> bool:
    """The job's request is certified for ``version`` (a joint run's members each for the one
    version it produced), the versions still holding its data superseded, the job succeeded."""
    superseded = conclude(session, job, version, metrics, at)
    return states.transition(
        session,
        job,
        JobStatus.succeeded,
        reason=reason,
        lease=lease,
        values={
            "metrics": metrics,
            "output_version_id": version.id,
            "progress": 1.0,
            "phase": "save",
            "finished_at": at,
        },
        details={
            "output_version_id": version.id,
            "output_sha256": version.sha256,
            **details,
            "superseded_version_ids": superseded,
        },
    )
