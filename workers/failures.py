"""What a failed job tells its client: a reason and an error text a person can act on."""

from __future__ import annotations

import errno
import traceback
from collections.abc import Mapping
from typing import Any

import torch

# The request parameter that sets the batch of each phase a method reports.
_BATCH_PARAM = {
    "noise": "noise_batch",
    "impair": "impair_batch_size",
    "repair": "repair_batch_size",
    "extra_repair": "repair_batch_size",
    "neggrad_plus": "forget_batch_size",
}


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    # CPU allocations (and older CUDA builds) raise a plain RuntimeError.
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "DefaultCPUAllocator: can't allocate memory" in text
        or "not enough memory" in text
    )  # fmt: skip


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def batch_param(phase: str | None) -> str:
    return _BATCH_PARAM.get(phase or "", "batch_size")


def describe_failure(
    exc: BaseException, phase: str | None, method: str | None, params: Mapping[str, Any]
) -> tuple[str, str]:
    """(reason for the job's history, error for the client); ``phase``: the last one the job
    reported, ``method`` and ``params``: the request's (None and empty before they loaded)."""
    if is_out_of_memory(exc):
        param = batch_param(phase)
        current = params.get(param, "the method's default")
        return "out of memory", (
            f"the worker ran out of memory during {phase or 'the job'}"
            f"{f' ({method})' if method else ''}: submit the request again with a smaller "
            f"params.{param} (now {current}), or run it on a worker with more memory"
        )
    if is_disk_full(exc):
        return "no space left to save the result", (
            "the checkpoint store is full (no space left on device) while saving the result; "
            "nothing was published: free space in the store, then submit the request again"
        )
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return "the job raised an error", detail
