from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AuditEventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    seq: int = Field(description="position in the organisation's hash chain, from 1")
    at: datetime
    action: str
    actor: str = Field(description="key:<id>, worker:<host> or cli:<user>")
    model_id: str | None
    model_version_id: str | None
    dataset_id: str | None
    request_id: str | None
    job_id: str | None
    caller_reference: str | None
    client_address: str | None
    http_request_id: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditEventRead]
    next_page_token: str | None


class ChainBreak(BaseModel):
    seq: int = Field(description="the first event that does not check out")
    event_id: int | None
    found_seq: int | None = None
    code: str = Field(
        description="sequence_gap, link_broken, content_altered, truncated or anchor_mismatch"
    )
    detail: str


class ChainVerification(BaseModel):
    ok: bool
    org_id: str
    events_checked: int
    head_seq: int
    head_hash: str
    broken: ChainBreak | None


class SigningKey(BaseModel):
    algorithm: str
    key_id: str
    public_key_pem: str
