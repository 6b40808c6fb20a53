"""Unlearning methods the service offers, with their parameter validation."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pydantic import TypeAdapter, ValidationError

from app.config import get_settings
from app.errors import InvalidMethodParams, UnknownMethod
from unlearning.methods.unsir import UnsirConfig

CLASS_METHODS: dict[str, type[Any]] = {"unsir": UnsirConfig}
DEFAULT_CLASS_METHOD = "unsir"


def check_memory(
    method: str, params: dict[str, Any], forget_count: int, input_shape: list[int]
) -> None:
    """Refuse parameters whose impair set alone would not fit a worker's memory."""
    if method != "unsir":
        return
    per_image = 4 * math.prod(input_shape)
    needed = forget_count * params["noise_batch"] * params["noise_repeats"] * per_image
    limit = get_settings().max_noise_bytes
    if needed > limit:
        raise InvalidMethodParams(
            f"the impair set would take {needed / 1024**3:.1f} GiB of memory "
            f"(forget classes x noise_batch x noise_repeats x input size); the limit is "
            f"{limit / 1024**3:.1f} GiB: lower noise_batch or noise_repeats"
        )


def resolve_params(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """Every parameter of ``method``, defaults filled in, so the job records all of them."""
    config_type = CLASS_METHODS.get(method)
    if config_type is None:
        raise UnknownMethod(
            f"unknown method {method!r}; available for classes: {sorted(CLASS_METHODS)}"
        )
    known = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidMethodParams(
            f"unknown parameters for {method}: {unknown}; known: {sorted(known)}"
        )
    try:
        config = TypeAdapter(config_type).validate_python(params, strict=False)
    except ValidationError as exc:
        raise InvalidMethodParams(
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        ) from exc
    except ValueError as exc:  # raised by the config's own range checks
        raise InvalidMethodParams(str(exc)) from exc
    return dict(dataclasses.asdict(config))
