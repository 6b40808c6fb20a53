from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=2000,
        description="an http:// or https:// URL that receives a signed POST per event",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
            raise ValueError("the URL must not contain spaces or control characters")
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises ValueError on a malformed port
        except ValueError as exc:
            raise ValueError(f"not a valid URL: {exc}") from exc
        if parts.scheme.lower() not in ("http", "https"):
            raise ValueError("the URL must start with http:// or https://")
        if not parts.hostname:
            raise ValueError("the URL must name a host")
        return url


class WebhookRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    url: str
    created_at: datetime
    disabled_at: datetime | None


class WebhookCreated(WebhookRead):
    secret: str = Field(
        description="the HMAC-SHA256 key that signs every delivery (whsec_...): shown once"
    )


class WebhookDeliveryRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="also the payload's id and the Nepenthe-Webhook-Id header")
    event_type: str
    request_id: str | None
    status: str = Field(description="pending, delivered or failed")
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any]
