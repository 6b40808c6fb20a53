"""What a failed job tells its client: a reason and an error text a person can act on."""

from __future__ import annotations

import errno
import traceback
from collections.abc import Mapping
from typing import Any

import torch

from unlearning.jobs import MEASUREMENT_PHASES
from unlearning.methods import METHODS

_MORE_MEMORY = "run it on a worker with more memory (a larger GPU, or NEPENTHE_DEVICE=cpu)"


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    # CPU allocations (and older CUDA builds) raise a plain RuntimeError.
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text
        or "DefaultCPUAllocator: can't allocate memory" in text
        or "not enough memory" in text
    )


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def memory_advice(phase: str | None, method: str | None, params: Mapping[str, Any]) -> str:
    """Which parameter to lower, among those the request's method accepts (``params`` are the
    request's resolved parameters: every one the method has)."""
    if phase in MEASUREMENT_PHASES:
        return f"this phase runs at a fixed batch size that no parameter sets: {_MORE_MEMORY}"
    if phase == "reference":
        return f"submit it again with a smaller reference.params.batch_size, or {_MORE_MEMORY}"
    wanted = METHODS[method].batch_param(phase) if method in METHODS else "batch_size"
    names = [wanted] if wanted in params else sorted(p for p in params if "batch" in p)
    if not names:
        return _MORE_MEMORY
    lower = ", ".join(f"params.{name} (now {params[name]})" for name in names)
    return f"submit it again with a smaller {lower}, or {_MORE_MEMORY}"


def describe_failure(
    exc: BaseException, phase: str | None, method: str | None, params: Mapping[str, Any]
) -> tuple[str, str]:
    """(reason for the job's history, error for the client); ``phase``: the last one the job
    reported, ``method`` and ``params``: the request's (None and empty before they loaded)."""
    if is_out_of_memory(exc):
        where = f"during {phase or 'the job'}{f' ({method})' if method else ''}"
        return "out of memory", f"the worker ran out of memory {where}: " + memory_advice(
            phase, method, params
        )
    if is_disk_full(exc):
        assert isinstance(exc, OSError)
        if phase == "save":
            return "no space left to save the result", (
                "the checkpoint store is full (no space left on device) while saving the "
                "result; nothing was published: free space in the store, then submit the "
                "request again"
            )
        where = f" ({exc.filename})" if exc.filename else ""
        return "no space left on device", (
            f"the worker's disk is full{where} during {phase or 'the job'}: free space on the "
            "worker (its temporary folder, the store cache), then submit the request again"
        )
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return "the job raised an error", detail
