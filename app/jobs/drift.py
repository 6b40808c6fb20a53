"""Drift: how far a model has moved from its last fully trained ancestor through deletions.

Every version a job produces records its drift against its *base*, the nearest ancestor that was
fully trained (an upload, or a version a budget's retrain produced): the deletion requests served
since (each member of a joint run counts), the summed change of held-out retain quality over those
jobs (each job measures its input and its output on the same held-out set), and the normalised L2
distance of its weights to the base's. A model may declare a budget; a job whose version exceeds
it says so in its metrics, in an audit event and a webhook (``model.drift_budget_exceeded``), and
when the budget allows, the next deletion (or this one, when its own count already exceeds the
budget) runs a retrain from the model's training record as its method: that version is a new base.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.actors import worker_actor
from app.audit import service as audit
from app.models import lineage
from app.orm import DeletionRequest, Model, ModelVersion
from app.webhooks import service as webhooks

EXCEEDED_EVENT = "model.drift_budget_exceeded"


@dataclass(frozen=True)
class DriftPlan:
    """What a job knows of its input's drift before it runs, and what the budget decides."""

    base_version_id: str
    base_storage_key: str
    # The input version's record (None: the input is itself a base).
    parent: dict[str, Any] | None
    deletions: int  # served since the base once this job's requests are
    budget: dict[str, Any] | None
    # Limits this job would exceed before it runs (its count, or its input already over).
    exceeded_before: list[str]
    retrain: bool


def is_base(version: ModelVersion) -> bool:
    """Fully trained: uploaded, or produced by a budget's retrain. (A version a job produced
    before drift was recorded has no record: it counts as moved, from an unknown count.)"""
    return version.produced_by_request_id is None or bool((version.drift or {}).get("retrained"))


def base_of(session: Session, version: ModelVersion) -> ModelVersion:
    for v in [version, *lineage.ancestors(session, version)]:
        if is_base(v):
            return v
    raise AssertionError(f"version {version.id} has no base: its root was not uploaded")


def plan(session: Session, model: Model, version: ModelVersion, requests: int) -> DriftPlan:
    base = base_of(session, version)
    parent = None if is_base(version) else version.drift
    deletions = (parent or {}).get("deletions", 0) + requests
    budget = model.drift_budget
    projected = {
        "deletions": deletions,
        "retain_accuracy_change": (parent or {}).get("retain_accuracy_change"),
        "weight_distance": (parent or {}).get("weight_distance"),
    }
    over = exceeded(budget, projected)
    return DriftPlan(
        base_version_id=base.id,
        base_storage_key=base.storage_key,
        parent=parent,
        deletions=deletions,
        budget=budget,
        exceeded_before=over,
        retrain=bool(over and budget and budget.get("retrain") and model.training),
    )


def exceeded(budget: dict[str, Any] | None, figures: dict[str, Any]) -> list[str]:
    """The budget's limits that ``figures`` go past (a figure not measured passes)."""
    if not budget:
        return []
    over = []
    if budget.get("max_deletions") is not None and figures["deletions"] > budget["max_deletions"]:
        over.append("max_deletions")
    drop = -(figures.get("retain_accuracy_change") or 0.0)
    if (
        budget.get("max_retain_accuracy_drop") is not None
        and drop > budget["max_retain_accuracy_drop"]
    ):
        over.append("max_retain_accuracy_drop")
    distance = figures.get("weight_distance")
    if (
        budget.get("max_weight_distance") is not None
        and distance is not None
        and distance > budget["max_weight_distance"]
    ):
        over.append("max_weight_distance")
    return over


def retain_step(metrics: dict[str, Any]) -> tuple[str, float | None]:
    """The job's own change of held-out retain quality: accuracy for classifiers, PSNR (dB)
    for image-to-image models."""
    before, after = metrics["before"], metrics["after"]
    if metrics.get("task") == "image_to_image":
        return "retain_psnr_change", after["retain"]["psnr"] - before["retain"]["psnr"]
    if before.get("retain_accuracy") is None or after.get("retain_accuracy") is None:
        return "retain_accuracy_change", None
    return "retain_accuracy_change", after["retain_accuracy"] - before["retain_accuracy"]


def record(plan: DriftPlan, metrics: dict[str, Any], distance: float | None) -> dict[str, Any]:
    """The drift record of the version this job produced (also the job's ``metrics.drift``)."""
    name, step = retain_step(metrics)
    if plan.retrain:  # a new base: it has moved from nothing
        return {
            "base_version_id": None,
            "retrained": True,
            "retrained_because": plan.exceeded_before,
            "previous_base_version_id": plan.base_version_id,
            "deletions": 0,
            name: 0.0,
            "weight_distance": 0.0,
            "step": {name: step},
            "budget": plan.budget,
            "exceeded": [],
        }
    summed = (plan.parent or {}).get(name, 0.0)
    figures = {
        "base_version_id": plan.base_version_id,
        "retrained": False,
        "deletions": plan.deletions,
        name: summed + step if step is not None and summed is not None else None,
        "weight_distance": distance,
        "step": {name: step},
        "budget": plan.budget,
    }
    figures["exceeded"] = exceeded(plan.budget, figures)
    return figures


def announce(
    session: Session, model: Model, version: ModelVersion, request_id: str, job_id: str
) -> None:
    """Tell the organisation that ``version`` went past its model's budget, or was retrained
    because its input had (audit event and webhook, in the outcome's transaction)."""
    figures = version.drift or {}
    if not figures.get("exceeded") and not figures.get("retrained"):
        return
    data = {
        "model_id": model.id,
        "model_version_id": version.id,
        "request_id": request_id,
        "job_id": job_id,
        "drift": figures,
    }
    request = session.get(DeletionRequest, request_id)
    audit.record(
        session,
        worker_actor(model.org_id),
        EXCEEDED_EVENT,
        model_id=model.id,
        model_version_id=version.id,
        request_id=request_id,
        job_id=job_id,
        caller_reference=request.caller_reference if request else None,
        details=data,
    )
    webhooks.notify(session, model.org_id, request_id, EXCEEDED_EVENT, data)
