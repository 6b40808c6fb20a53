from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from app.models.schemas import ModelVersionRead


class ArtifactRead(BaseModel):
    name: str
    media_type: str
    sha256: str
    size_bytes: int
    url: str


class JobRead(BaseModel):
    id: str
    request_id: str
    status: str
    phase: str | None
    progress: float
    error: str | None
    metrics: dict[str, Any] | None
    output_version: ModelVersionRead | None
    artifacts: list[ArtifactRead] = []
    cancel_requested: bool
    attempts: int
    # Coalescing (docs/api.md): until when a queued job waits for others to join it, and the
    # job whose run this one's request was forgotten in.
    not_before: datetime | None = None
    joint_job_id: str | None = None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class JobEventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    from_status: str | None
    to_status: str
    reason: str | None
    at: datetime
