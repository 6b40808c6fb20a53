from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.validation import Body

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class DatasetCreate(Body):
    """A dataset read from where it lies; upload .npz archives to ``/v1/datasets/npz``."""

    name: str = Field(min_length=1, max_length=200, pattern=NAME_PATTERN)
    kind: Literal["sklearn_digits", "fashion_mnist", "image_folder"]
    location: str | None = Field(
        None,
        max_length=4096,
        description="root folder (Fashion-MNIST root holding FashionMNIST/raw, or ImageFolder)",
    )

    @model_validator(mode="after")
    def _location_needed(self) -> DatasetCreate:
        if self.kind != "sklearn_digits" and not self.location:
            raise ValueError(f"a {self.kind} dataset needs a location")
        if self.kind == "sklearn_digits" and self.location:
            raise ValueError("sklearn_digits ships with scikit-learn and takes no location")
        if self.location and self.location.startswith("store:"):
            raise ValueError("locations under store: are reserved for uploaded archives")
        return self


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    kind: str
    location: str | None
    class_names: list[str]
    image_shape: list[int] | None
    train_count: int
    test_count: int
    created_at: datetime


class SampleRead(BaseModel):
    id: str = Field(description="what a sample deletion request names in forget_samples")
    split: Literal["train", "test"] = Field(description="only train samples can be forgotten")
    label: int
    class_name: str


class SamplePage(BaseModel):
    items: list[SampleRead]
    total: int = Field(description="samples matching the filters, on every page")
    next_page_token: str | None = Field(description="pass as page_token for the next page")
