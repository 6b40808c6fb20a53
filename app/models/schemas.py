from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


class TransformIn(Part):
    """The completion task of an image-to-image model; evaluation masks follow it."""

    kind: Literal["center_square", "outpaint", "random"] = Field(
        "center_square",
        description="center_square: inpaint a centred square; outpaint: complete a border on "
        "all four sides; random: inpaint random cells of a grid",
    )
    size: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="square side, border width (below 0.5) or share of hidden cells, as a "
        "fraction of the image side",
    )
    cell: int = Field(4, ge=1, le=4096, description="cell side in pixels (random masks)")


class TrainingRecord(Part):
    """How the registered weights were trained: the scale a deletion's cost is reported
    against (a retrain of this length over the retain data)."""

    epochs: float = Field(gt=0, le=100_000, description="epochs over the training split")
    optimizer: str | None = Field(None, max_length=50, examples=["sgd", "adam", "adamw"])
    lr: float | None = Field(None, gt=0, le=100)
    batch_size: int | None = Field(None, ge=1, le=1_000_000)
    augmentation: str | None = Field(
        None, max_length=500, description="free text, e.g. 'random crop 32 pad 4, h-flip'"
    )


class Coalescing(Part):
    """Requests waiting on one version of the model run as one job that forgets their union:
    one unlearning run and one new version for many requests, each with its own receipt,
    certificate and audit trail."""

    max_wait_s: float = Field(
        gt=0,
        le=30 * 86400,
        description="how long a request may wait for others to join it; never past its due "
        "date less the service's deadline margin (NEPENTHE_COALESCING_DEADLINE_MARGIN_S)",
    )
    max_requests: int = Field(
        100, ge=2, le=1000, description="the most requests one joint job may serve"
    )


class DriftBudget(Part):
    """How far the model's versions may move from their last fully trained ancestor (an upload
    or a retrain) through deletions; a limit left out is not checked."""

    max_deletions: int | None = Field(
        None, ge=1, le=1_000_000, description="deletion requests served since that ancestor"
    )
    max_retain_accuracy_drop: float | None = Field(
        None,
        gt=0,
        le=1,
        description="classifiers: the summed fall of held-out retain accuracy over those "
        "deletions (0.02: two points)",
    )
    max_weight_distance: float | None = Field(
        None, gt=0, le=100, description="normalised L2 distance of the weights to that ancestor"
    )
    retrain: bool = Field(
        False,
        description="when the next deletion would exceed the budget (or the last one did), run "
        "a retrain from the model's training record as that deletion's method (the model "
        "needs a training record)",
    )


class ModelCreate(Body):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    task: Literal["classification", "image_to_image"] = "classification"
    architecture: Architecture
    input_shape: list[int] = Field(min_length=3, max_length=3, description="[C, H, W]")
    normalization: Normalization = Normalization(mean=[0.0], std=[1.0])
    class_names: list[str] = Field(
        default_factory=list,
        max_length=100_000,
        description="classifiers: at least two; image-to-image models: none",
    )
    encoder: list[str] | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="image-to-image: parameter-name prefixes of the part unlearning trains "
        "(default: the architecture's whole encoder, 'encoder.')",
    )
    transform: TransformIn | None = Field(
        None, description="image-to-image: the completion task (default: centre square, 0.5)"
    )
    training: TrainingRecord | None = Field(
        None,
        description="how the weights were trained (optional): jobs report their cost as a "
        "share of a retrain of this length",
    )
    coalescing: Coalescing | None = Field(
        None,
        description="opt in to joining the deletion requests that wait on one version into one "
        "job (default: every request runs as its own job)",
    )
    drift_budget: DriftBudget | None = Field(
        None, description="limits on how far deletions may move the model (default: none)"
    )

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

    @field_validator("encoder")
    @classmethod
    def _prefixes(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not 1 <= len(p) <= 200 for p in v):
            raise ValueError("encoder prefixes must be 1 to 200 characters long")
        return v

    @model_validator(mode="after")
    def _fits_task(self) -> ModelCreate:
        if self.task == "classification":
            if len(self.class_names) < 2:
                raise ValueError("a classifier needs at least two class_names")
            if self.encoder is not None or self.transform is not None:
                raise ValueError("only image_to_image models declare an encoder and a transform")
        elif self.class_names:
            raise ValueError(
                "image_to_image models take no class_names: deletion requests name the classes "
                "of the registered dataset"
            )
        return self


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
    encoder: list[str] | None = None
    transform: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    coalescing: dict[str, Any] | None = None
    drift_budget: dict[str, Any] | None = None
    created_at: datetime


class ModelUpdate(Body):
    """What may change on a registered model: its coalescing and its drift budget (a field left
    out is kept; null turns it off)."""

    coalescing: Coalescing | None = Field(
        None, description="the coalescing settings, or null to run every request as its own job"
    )
    drift_budget: DriftBudget | None = Field(None, description="the drift budget, or null")

    @model_validator(mode="after")
    def _changes_something(self) -> ModelUpdate:
        if not self.model_fields_set:
            raise ValueError("name what to change: coalescing, drift_budget")
        return self


class ModelVersionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    model_id: str
    number: int
    sha256: str = Field(
        description="SHA-256 of the stored checkpoint: the canonical safetensors file that "
        "downloads serve (the ETag), jobs read and receipts name as the input"
    )
    size_bytes: int = Field(description="size of the stored checkpoint")
    uploaded_sha256: str | None = Field(
        None,
        description="SHA-256 of the file as it was uploaded, before it was re-serialised "
        "(the customer's own file); null for versions a deletion produced and for uploads "
        "recorded before these were kept",
    )
    uploaded_size_bytes: int | None = Field(None, description="size of the uploaded file")
    source_format: str
    parent_version_id: str | None
    produced_by_request_id: str | None
    superseded_at: datetime | None = Field(
        None,
        description="set once a deletion request succeeded on this version or an "
        "ancestor: the weights still hold data that was to be forgotten, and downloads need an "
        "admin's reason",
    )
    superseded_by_request_id: str | None = None
    drift: dict[str, Any] | None = Field(
        None,
        description="a version a deletion produced: how far it has moved from its last fully "
        "trained ancestor (deletions since, retain change, weight distance, the budget's verdict)",
    )
    created_at: datetime
    download_url: str = ""


class TimmArchitectures(BaseModel):
    """timm classifiers are accepted by name, ``timm:<model_name>``: the names are those of
    ``timm.list_models()`` of the server's timm, too many to list here."""

    prefix: str = Field(examples=["timm:"])
    version: str = Field(description="the server's timm version")
    count: int = Field(description="how many names timm.list_models() lists")
    names: str = Field(description="where the names are listed")
    args: list[str] = Field(description="the constructor arguments a registration may pass")


class ArchitectureList(BaseModel):
    builtin: list[str]
    timm: TimmArchitectures
    torchvision: list[str]
    image_to_image: list[str]
    image_to_image_libraries: list[str] = Field(
        description="library classes registered from save_pretrained files: args.config is "
        "the config.json"
    )
