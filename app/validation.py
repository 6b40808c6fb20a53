"""Checks on free-form JSON that the schemas cannot express: finite numbers, no NUL characters.

``json.loads`` accepts NaN and Infinity, and PostgreSQL refuses both (in JSON) and NUL characters
(in text); a value the database would reject must be refused as bad input first.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator

from app.errors import InvalidPageToken, InvalidTimeBound

MAX_DEPTH = 32


def check_json_value(value: Any, where: str = "value", depth: int = 0) -> Any:
    """Raise ValueError naming the first non-finite number, NUL character, lone surrogate or
    over-deep nesting in ``value``."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{where} is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number")
    if isinstance(value, str):
        check_text(value, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_json_value(key, where, depth + 1)
            check_json_value(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_json_value(item, f"{where}[{i}]", depth + 1)
    return value


def check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise ValueError(f"{where} must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a JSON escape such as \ud800
        raise ValueError(f"{where} is not valid Unicode text") from exc


def printable(text: str | None) -> str | None:
    """A validator for free text outside JSON bodies (form fields): no NUL, valid Unicode, so
    both backends answer the same 422 instead of PostgreSQL refusing the query."""
    if text is not None:
        check_text(text, "the value")
    return text


Printable = AfterValidator(printable)


class Part(BaseModel):
    """A model nested inside a request body: unknown fields and non-finite floats are refused
    (the enclosing ``Body`` has already checked every value inside it)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Body(Part):
    """Base of every JSON request body: unknown fields, NaN, Infinity and NUL are refused."""

    @model_validator(mode="before")
    @classmethod
    def _finite_and_printable(cls, data: Any) -> Any:
        return check_json_value(data, "body")


def utc_bound(moment: datetime | None, name: str) -> datetime | None:
    """A query's time bound in UTC (naive times are read as UTC)."""
    if moment is None:
        return None
    try:
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (OverflowError, ValueError) as exc:
        raise InvalidTimeBound(f"{name} is outside the representable range of times") from exc


def page_position(page_token: str | None) -> int:
    """The position a ``next_page_token`` this API issued names (0 for the first page)."""
    if not page_token:
        return 0
    if not re.fullmatch(r"[0-9]{1,18}", page_token):
        raise InvalidPageToken("page_token is not one this API issued")
    return int(page_token)
