"""Signed evidence of a deletion request: the receipt at acceptance, the certificate when the
job succeeded, and the export of everything an auditor asks for.

The documents name the forgotten data only by a salted hash of the forget specification: sample
ids can themselves be personal data, and evidence must not keep what was erased. The salt is
random per request and only the evidence export (audit scope) discloses it, so a key that can
read a request cannot test guessed sample ids against its hash; whoever holds the specification
and the export can recompute it.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from app.audit.chain import timestamp
from app.keys import get_signer
from app.orm import DeletionRequest, Job, ModelVersion
from app.signing import sha256_hex
from app.version import code_version

RECEIPT = "nepenthe.deletion_receipt"
CERTIFICATE = "nepenthe.deletion_certificate"


def hash_recipe(salted: bool) -> str:
    """How forget_spec_sha256 is computed, in words an auditor can follow."""
    fields = "dataset_id, retain_dataset_id, forget_classes (sorted), forget_samples (sorted)"
    return (
        "SHA-256 of the JSON object {" + fields + (", salt" if salted else "") + "} with sorted "
        "keys, no spaces and ASCII escapes (absent forget_classes or forget_samples are null)"
    )


def new_salt() -> str:
    return secrets.token_hex(32)


def forget_spec_sha256(
    dataset_id: str,
    retain_dataset_id: str | None,
    forget_classes: list[int] | None,
    forget_samples: list[str] | None,
    salt: str | None,
) -> str:
    """A hash of what is to be forgotten. Sample ids are sorted, so the order they were sent in
    does not change it. ``salt`` None is the unsalted hash of requests made before salting."""
    spec: dict[str, Any] = {
        "dataset_id": dataset_id,
        "retain_dataset_id": retain_dataset_id,
        "forget_classes": sorted(forget_classes) if forget_classes is not None else None,
        "forget_samples": sorted(forget_samples) if forget_samples is not None else None,
    }
    if salt is not None:
        spec["salt"] = salt
    return sha256_hex(spec)


def _request_fields(request: DeletionRequest, source: ModelVersion) -> dict[str, Any]:
    forget_kind = "classes" if request.forget_classes is not None else "samples"
    count = len(request.forget_classes or request.forget_samples or [])
    return {
        "request_id": request.id,
        "org_id": request.org_id,
        "caller_reference": request.caller_reference,
        "upstream_request_id": request.upstream_request_id,
        "received_at": timestamp(request.created_at),
        "due_at": timestamp(request.due_at),
        "model_id": source.model_id,
        "model_version_id": source.id,
        "input_checkpoint_sha256": source.sha256,
        # The file the customer uploaded (the stored one above is its canonical
        # re-serialisation); None when the input was produced by an earlier deletion.
        "input_checkpoint_uploaded_sha256": source.uploaded_sha256,
        "input_checkpoint_uploaded_size_bytes": source.uploaded_size_bytes,
        "dataset_id": request.dataset_id,
        "forget_spec_sha256": request.forget_spec_sha256,
        "forget_spec_salted": request.forget_spec_salt is not None,
        "forget": {"kind": forget_kind, "count": count},
        "method": request.method,
        "params": request.params,
        "seed": request.params.get("seed"),
        "acceptance_thresholds": request.acceptance,
    }


def issue_receipt(request: DeletionRequest, source: ModelVersion) -> dict[str, Any]:
    request.receipt = receipt = get_signer().sign(
        {
            "type": RECEIPT,
            "issued_at": timestamp(request.created_at),
            **_request_fields(request, source),
            "code_version": code_version(),
        }
    )
    return receipt


def issue_certificate(
    request: DeletionRequest,
    job: Job,
    source: ModelVersion,
    output: ModelVersion,
    metrics: dict[str, Any],
    completed_at: datetime,
) -> None:
    """Sign what was done: when, by which code on which device, measured how, and the result."""
    environment = metrics.get("environment", {})
    acceptance = metrics.get("acceptance", {})
    request.certificate = get_signer().sign(
        {
            "type": CERTIFICATE,
            "issued_at": timestamp(completed_at),
            **_request_fields(request, source),
            "job_id": job.id,
            "attempts": job.attempts,
            "started_at": timestamp(job.started_at or completed_at),
            "completed_at": timestamp(completed_at),
            "code_version": code_version(),
            "device": environment.get("device"),
            "environment": environment,
            "metrics": metrics,
            "acceptance": acceptance,
            "output_version_id": output.id,
            "output_checkpoint_sha256": output.sha256,
            # Requests accepted before receipts existed (migration 0004) have none to link to.
            "receipt_signature": request.receipt["signature"]["value"] if request.receipt else None,
            # A request forgotten in one run with others (app.jobs.coalescing): that run's job
            # and every request it served (each holds a certificate of its own).
            **_joint_fields(metrics),
        }
    )


def _joint_fields(metrics: dict[str, Any]) -> dict[str, Any]:
    joint = metrics.get("joint")
    if joint is None:
        return {}
    return {"joint_job_id": joint["job_id"], "joint_request_ids": joint["request_ids"]}
