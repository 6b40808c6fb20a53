from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from app.jobs.schemas import JobRead
from app.validation import Body, Part


class AcceptanceIn(Part):
    """Thresholds a deletion must meet to be published; omitted ones take the defaults, and an
    explicit null switches a check off."""

    max_forget_accuracy: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="highest forget accuracy after unlearning (default 0.05 for classes, "
        "off for samples)",
    )
    max_retain_drop: float | None = Field(
        None, ge=0.0, le=1.0, description="largest fall in held-out retain accuracy (0.05)"
    )
    max_mia_gap: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="largest distance of the forget set's entropy-MIA member rate from the "
        "retrained reference's (0.10 plus two standard errors; checked only with a reference)",
    )
    max_forget_member_excess: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="largest excess of the forget set's entropy-MIA member rate over held-out "
        "data's (0.10)",
    )
    max_forget_member_shortfall: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="largest shortfall of the forget set's entropy-MIA member rate below "
        "held-out data's: over-forgetting is a signature too (0.10 for samples, off for classes)",
    )
    min_feature_probe_drop: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="class requests: least fall, from the original's, of a linear probe's "
        "accuracy on the forgotten classes' held-out images read from the model's features "
        "(off; a change to the head alone leaves it at 0)",
    )
    max_retain_psnr_drop: float | None = Field(
        None,
        ge=0.0,
        le=100.0,
        description="image-to-image: largest fall in dB of retain completions' PSNR (1.0)",
    )
    min_forget_psnr_drop: float | None = Field(
        None,
        ge=0.0,
        le=100.0,
        description="image-to-image: least fall in dB of forget completions' PSNR (1.5)",
    )


class ReferenceIn(Part):
    """A reference model trained for comparison: every metric is also reported as a gap to it."""

    method: Literal["retrain"] = "retrain"
    params: dict[str, Any] = Field(default_factory=dict, description="retrain parameters")


class DeletionRequestCreate(Body):
    model_version_id: str = Field(min_length=1, max_length=64)
    dataset_id: str = Field(min_length=1, max_length=200, description="dataset id or name")
    forget_classes: list[StrictInt | StrictStr] | None = Field(
        None, min_length=1, max_length=10_000, description="class indices or class names"
    )
    forget_samples: list[StrictStr] | None = Field(
        None, min_length=1, max_length=1_000_000, description="sample ids of the dataset"
    )
    retain_dataset_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="image-to-image: a proxy retain set (dataset id or name) used instead of "
        "the training data outside the forget set",
    )
    method: str | None = Field(
        None,
        max_length=32,
        description="default: unsir for classes, salun for samples (classifiers); i2i "
        "(image-to-image models)",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="method parameters")
    acceptance: AcceptanceIn | None = None
    reference: ReferenceIn | None = None
    measure_relearn_time: StrictBool = Field(
        False, description="also measure relearn time (costs up to 50 short epochs per model)"
    )
    budget_epochs: float | None = Field(
        None,
        gt=0.0,
        le=100_000.0,
        description="the most method work allowed, in epoch-equivalents of the training split "
        "(sample passes / its size); a method whose estimate exceeds it is refused with 422 "
        "budget_exceeded before anything runs. The default class method (auto) sizes itself "
        "to it, and to 0.1 without one",
    )
    caller_reference: str | None = Field(
        None, max_length=200, description="your own reference (a ticket number)"
    )
    upstream_request_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="the data-subject request's id in your privacy platform (OpenDSR "
        "subject_request_id, a Transcend request id); auditors can look requests up by it",
    )

    @model_validator(mode="after")
    def _one_forget_set(self) -> DeletionRequestCreate:
        if (self.forget_classes is None) == (self.forget_samples is None):
            raise ValueError("name exactly one of forget_classes or forget_samples")
        return self


class ExtensionCreate(Body):
    months: int = Field(ge=1, le=12, description="months added to the deadline")
    reason: str = Field(
        min_length=1,
        max_length=2000,
        description="why the request needs longer (told to the data subject)",
    )


class ExtensionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    months: int
    reason: str
    previous_due_at: datetime
    due_at: datetime
    actor: str
    created_at: datetime


class VersionContainment(BaseModel):
    """A model version and whether it still holds the data a request names."""

    id: str
    model_id: str
    number: int
    sha256: str
    uploaded_sha256: str | None
    parent_version_id: str | None
    produced_by_request_id: str | None
    contains_forgotten_data: bool
    superseded_at: datetime | None
    superseded_by_request_id: str | None


class DeletionRequestRead(BaseModel):
    id: str
    model_version_id: str
    model_id: str
    dataset_id: str
    retain_dataset_id: str | None
    forget_classes: list[int] | None
    forget_class_names: list[str] | None
    forget_samples_count: int | None
    method: str
    params: dict[str, Any]
    acceptance: dict[str, Any] | None
    reference: dict[str, Any] | None
    measure_relearn_time: bool
    budget_epochs: float | None = None
    caller_reference: str | None
    upstream_request_id: str | None
    forget_spec_sha256: str = Field(
        description="SHA-256 of the canonical forget specification (what the receipt names)"
    )
    created_at: datetime
    received_at: datetime
    due_at: datetime = Field(description="received plus the statutory period and extensions")
    open: bool = Field(
        description="not yet carried out: the job has not succeeded, and the "
        "request was not canceled"
    )
    overdue: bool
    completed_at: datetime | None
    extensions: list[ExtensionRead]
    closed_at: datetime | None = Field(
        description="closed without a deletion of its own: by an operator, or satisfied"
    )
    closed_by: str | None
    close_reason: str | None
    satisfied_by_request_id: str | None = Field(
        description="the later request on the same model that forgot all of this one's data"
    )
    receipt_url: str
    certificate_url: str | None
    job: JobRead


class RetryCreate(Body):
    """Run a rejected or failed request's job again. A field left out keeps the request's
    value; ``params`` keep the request's only while the method stays the same."""

    reason: str = Field(min_length=1, max_length=2000, description="why it is run again")
    method: str | None = Field(None, max_length=32)
    params: dict[str, Any] | None = None
    acceptance: AcceptanceIn | None = None
    budget_epochs: float | None = Field(None, gt=0.0, le=100_000.0)


class CloseCreate(Body):
    reason: str = Field(
        min_length=1,
        max_length=2000,
        description="why the request ends without a deletion of its own (audited)",
    )
