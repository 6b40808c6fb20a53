from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.validation import Body, Part


class Normalization(Part):
    mean: list[float] = Field(min_length=1, max_length=3)
    std: list[float] = Field(min_length=1, max_length=3)

    @field_validator("std")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(not s > 0 for s in v):
            raise ValueError("every std must be positive")
        return v


class Architecture(Part):
    name: str = Field(min_length=1, max_length=100, examples=["tiny_cnn", "resnet18"])
    args: dict[str, Any] = Field(default_factory=dict)


class ModelCreate(Body):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    task: Literal["classification", "image_to_image"] = "classification"
    architecture: Architecture
    input_shape: list[int] = Field(min_length=3, max_length=3, description="[C, H, W]")
    normalization: Normalization = Normalization(mean=[0.0], std=[1.0])
    class_names: list[str] = Field(min_length=2, max_length=100_000)

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, v: list[int]) -> list[int]:
        if v[0] not in (1, 3) or not all(1 <= s <= 4096 for s in v[1:]):
            raise ValueError("input_shape is [C, H, W] with C in {1, 3} and 1 <= H, W <= 4096")
        return v

    @field_validator("class_names")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v) or any(not n.strip() for n in v):
            raise ValueError("class names must be unique and non-empty")
        return v


class ModelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    task: str
    architecture: str
    architecture_args: dict[str, Any]
    input_shape: list[int]
    normalization: dict[str, list[float]]
    class_names: list[str]
    created_at: datetime


class ModelVersionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    model_id: str
    number: int
    sha256: str
    size_bytes: int
    source_format: str
    parent_version_id: str | None
    produced_by_request_id: str | None
    created_at: datetime
    download_url: str = ""


class ArchitectureList(BaseModel):
    builtin: list[str]
    torchvision: list[str]
