from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class AuditEventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    action: str
    model_id: str | None
    model_version_id: str | None
    dataset_id: str | None
    request_id: str | None
    job_id: str | None
    caller_reference: str | None
    client_address: str | None
    details: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditEventRead]
    next_page_token: str | None
