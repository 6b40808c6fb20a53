from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr, model_validator

from app.jobs.schemas import JobRead
from app.validation import Body, Part


class AcceptanceIn(Part):
    """Thresholds a deletion must meet to be published; omitted ones take the defaults, and an
    explicit null switches a check off."""

    max_forget_accuracy: float | None = Field(
        None, ge=0.0, le=1.0,
        description="highest forget accuracy after unlearning (default 0.05 for classes, "
        "off for samples)",
    )  # fmt: skip
    max_retain_drop: float | None = Field(
        None, ge=0.0, le=1.0, description="largest fall in held-out retain accuracy (0.05)"
    )
    max_mia_gap: float | None = Field(
        None, ge=0.0, le=1.0,
        description="largest distance of the forget set's entropy-MIA member rate from the "
        "retrained reference's (0.05; checked only with a reference)",
    )  # fmt: skip
    max_forget_member_excess: float | None = Field(
        None, ge=0.0, le=1.0,
        description="largest excess of the forget set's entropy-MIA member rate over held-out "
        "data's (0.10)",
    )  # fmt: skip
    max_retain_psnr_drop: float | None = Field(
        None, ge=0.0, le=100.0,
        description="image-to-image: largest fall in dB of retain completions' PSNR (1.0)",
    )  # fmt: skip
    min_forget_psnr_drop: float | None = Field(
        None, ge=0.0, le=100.0,
        description="image-to-image: least fall in dB of forget completions' PSNR (1.5)",
    )  # fmt: skip


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
        None, min_length=1, max_length=200,
        description="image-to-image: a proxy retain set (dataset id or name) used instead of "
        "the training data outside the forget set",
    )  # fmt: skip
    method: str | None = Field(
        None, max_length=32,
        description="default: unsir for classes, salun for samples (classifiers); i2i "
        "(image-to-image models)",
    )  # fmt: skip
    params: dict[str, Any] = Field(default_factory=dict, description="method parameters")
    acceptance: AcceptanceIn | None = None
    reference: ReferenceIn | None = None
    measure_relearn_time: StrictBool = Field(
        False, description="also measure relearn time (costs up to 50 short epochs per model)"
    )
    caller_reference: str | None = Field(
        None, max_length=200, description="your ticket or upstream request id"
    )

    @model_validator(mode="after")
    def _one_forget_set(self) -> DeletionRequestCreate:
        if (self.forget_classes is None) == (self.forget_samples is None):
            raise ValueError("name exactly one of forget_classes or forget_samples")
        return self


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
    caller_reference: str | None
    created_at: datetime
    job: JobRead
