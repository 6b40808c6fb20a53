from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, StrictInt, StrictStr, model_validator

from app.jobs.schemas import JobRead
from app.validation import Body


class DeletionRequestCreate(Body):
    model_version_id: str = Field(min_length=1, max_length=64)
    dataset_id: str = Field(min_length=1, max_length=200, description="dataset id or name")
    forget_classes: list[StrictInt | StrictStr] | None = Field(
        None, min_length=1, max_length=10_000, description="class indices or class names"
    )
    forget_samples: list[StrictStr] | None = Field(
        None, min_length=1, max_length=1_000_000, description="sample ids of the dataset"
    )
    method: str | None = Field(None, max_length=32, description="default: unsir for classes")
    params: dict[str, Any] = Field(default_factory=dict, description="method parameters")
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
    forget_classes: list[int] | None
    forget_class_names: list[str] | None
    forget_samples_count: int | None
    method: str
    params: dict[str, Any]
    caller_reference: str | None
    created_at: datetime
    job: JobRead
