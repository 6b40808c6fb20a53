"""Checks on free-form JSON that the schemas cannot express: finite numbers, no NUL characters.

``json.loads`` accepts NaN and Infinity, and PostgreSQL refuses both (in JSON) and NUL characters
(in text); a value the database would reject must be refused as bad input first.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


def check_json_value(value: Any, where: str = "value") -> Any:
    """Raise ValueError naming the first non-finite number or NUL character in ``value``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number")
    if isinstance(value, str) and "\x00" in value:
        raise ValueError(f"{where} must not contain NUL characters")
    if isinstance(value, dict):
        for key, item in value.items():
            check_json_value(key, where)
            check_json_value(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_json_value(item, f"{where}[{i}]")
    return value


class Body(BaseModel):
    """Base of every JSON request body: unknown fields, NaN, Infinity and NUL are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _finite_and_printable(cls, data: Any) -> Any:
        return check_json_value(data, "body")
