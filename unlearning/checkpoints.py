"""Safe checkpoint reading and writing.

Uploaded files are never unpickled as code: safetensors is parsed as data, and a ``.pt`` file only
goes through ``torch.load(weights_only=True)``, which refuses any global it does not allow-list.

Nor do they take more memory than their network can need: a ``.pt`` zip archive is held to its
inflate limits and, like any upload, to the architecture's byte budget before torch reads it.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import nn

from unlearning import archives

StateDict = dict[str, torch.Tensor]

_ZIP_MAGIC = b"PK\x03\x04"
_MAX_SAFETENSORS_HEADER = 100_000_000
# What a checkpoint of a network may hold: 8 bytes (float64) per element of its state dict, four
# times over (an optimizer's state saved beside the weights), plus room for the pickle and extras.
BUDGET_BYTES_PER_ELEMENT = 32
BUDGET_SLACK_BYTES = 64 * 1024**2


class CheckpointError(ValueError):
    """An uploaded checkpoint cannot be used; ``code`` is stable and machine-readable."""

    def __init__(self, code: str, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.problems = problems or []


def sniff_format(head: bytes) -> str:
    """Tell a safetensors file from a torch (zip or legacy pickle) file by its first bytes.

    Safetensors is tried first: its first byte is the low byte of the header length, which is
    0x80, a pickle's first byte, for one header length in 32 (a header of 384 bytes, say). A
    pickle never passes as safetensors: its next bytes make an absurd header length."""
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len < _MAX_SAFETENSORS_HEADER and head[8:9] == b"{":
            return "safetensors"
    if head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80":
        return "torch"
    raise CheckpointError(
        "checkpoint_unreadable", "the file is neither safetensors nor a torch state dict"
    )


def byte_budget(model: nn.Module) -> int:
    """The most bytes a checkpoint of ``model`` (which may live on meta) may hold or inflate to."""
    elements = sum(t.numel() for t in model.state_dict().values())
    return BUDGET_BYTES_PER_ELEMENT * elements + BUDGET_SLACK_BYTES


def read_state_dict(
    path: Path, limits: archives.InflateLimits | None = None, budget: int | None = None
) -> StateDict:
    """Read tensors from an uploaded file, without executing code. A zip archive (``.pt``) may
    inflate as far as ``limits`` (code ``upload_inflates_too_far`` past them); any file may hold
    at most ``budget`` bytes (byte_budget of its network; ``checkpoint_mismatch`` past it)."""
    with path.open("rb") as fh:
        head = fh.read(16)
    fmt = sniff_format(head)
    if head.startswith(_ZIP_MAGIC):  # what torch takes for a zip archive
        _refuse_escaping_members(path)
        _check_inflation(path, limits, budget)
    elif budget is not None:
        # safetensors and the legacy pickle format hold their tensors' bytes as they are: reading
        # them allocates no more than the file's size (safetensors checks its header's offsets
        # against that size before allocating; torch checks each storage's).
        _within_budget(path.stat().st_size, budget, "holds")
    if fmt == "safetensors":
        return _read_safetensors(path)
    return _read_torch(path)


def _within_budget(size: int, budget: int, verb: str) -> None:
    if size > budget:
        message = (
            f"the checkpoint {verb} {size} bytes ({archives.mib(size)}), more than any checkpoint "
            f"of this architecture can ({archives.mib(budget)}: its parameters and buffers at 8 "
            "bytes each, four times over, plus 64 MiB): these are another network's weights"
        )
        raise CheckpointError("checkpoint_mismatch", message, [message])


def _read_safetensors(path: Path) -> StateDict:
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (safetensors.SafetensorError, json.JSONDecodeError, ValueError, OSError) as exc:
        raise CheckpointError("checkpoint_unreadable", f"invalid safetensors file: {exc}") from exc


def _read_torch(path: Path) -> StateDict:
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols other than 2; the refusal below is what matters.
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses globals outside its allow-list: code in a pickle lands here.
        raise CheckpointError(
            "checkpoint_unsafe",
            "the pickle references code or objects other than tensors; it was refused "
            "without being run. Upload a safetensors file or a plain state dict.",
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError("checkpoint_unreadable", f"unreadable torch file: {exc}") from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(
            "checkpoint_not_state_dict", "the torch file does not hold a state dict of tensors"
        )
    return dict(obj)


def _refuse_escaping_members(path: Path) -> None:
    # torch reads members by name and never extracts, yet it accepts "archive/../x": refuse such
    # names before torch sees them, with a code of their own rather than a miniz message.
    escaping = archives.escaping_members_of(path)
    if escaping:
        raise CheckpointError(
            "archive_path_escapes",
            f"the archive has members whose paths leave its folder: {escaping[:5]}",
        )


def _check_inflation(path: Path, limits: archives.InflateLimits | None, budget: int | None) -> None:
    # torch allocates each member at the size the zip directory declares, then inflates into it.
    try:
        declared = archives.check_directory(path, limits or archives.DEFAULT_LIMITS)
        if budget is not None:
            _within_budget(declared, budget, "inflates to")
        archives.check_streams(path)
    except CheckpointError:
        raise
    except archives.ArchiveError as exc:
        code = exc.code if exc.code == archives.INFLATES_TOO_FAR else "checkpoint_unreadable"
        raise CheckpointError(code, str(exc)) from exc
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError("checkpoint_unreadable", f"unreadable torch file: {exc}") from exc


def file_state(model: nn.Module) -> StateDict:
    """The model's tensors under the names its checkpoint files use. They are the state dict's
    names, except for library networks whose modules were renamed since the file format was
    fixed (``to_checkpoint``: transformers 5 loads older names into new modules)."""
    state = model.state_dict()
    rename = getattr(model, "to_checkpoint", None)
    return dict(rename(state)) if rename is not None else state


def fit_problems(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Every reason the tensors cannot be loaded into ``model`` (which may live on meta)."""
    expected = file_state(model)
    problems = [f"missing tensor {k!r}" for k in expected if k not in state]
    problems += [f"unexpected tensor {k!r}" for k in state if k not in expected]
    for key, ref in expected.items():
        got = state.get(key)
        if got is None:
            continue
        if tuple(got.shape) != tuple(ref.shape):
            problems.append(
                f"tensor {key!r} has shape {list(got.shape)}, the architecture needs "
                f"{list(ref.shape)}"
            )
        elif got.dtype.is_floating_point != ref.dtype.is_floating_point:
            problems.append(f"tensor {key!r} has dtype {got.dtype}, expected {ref.dtype}")
        elif got.dtype.is_floating_point and not _finite_as(got, ref.dtype):
            problems.append(f"tensor {key!r} contains NaN or infinite values")
    return problems


def _finite_as(tensor: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether every value stays finite once loaded into a parameter of ``dtype``: a float64 of
    1e300 becomes inf in float32, and some dtypes (float8_e4m3fn) have no isfinite of their own."""
    return bool(torch.isfinite(tensor.to(dtype)).all())


def canonical_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """Serialise to safetensors: the one format the store keeps and serves."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    return safetensors.torch.save(tensors, metadata={"format": "pt"})


def load_file(path: Path) -> StateDict:
    """Load a checkpoint the store wrote (always safetensors)."""
    return safetensors.torch.load_file(str(path), device="cpu")


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load tensors named as the model's checkpoint files name them (``file_state``)."""
    problems = fit_problems(model, state)
    if problems:
        raise CheckpointError("checkpoint_mismatch", "; ".join(problems[:5]), problems)
    rename = getattr(model, "from_checkpoint", None)
    model.load_state_dict(dict(rename(state)) if rename is not None else dict(state), strict=True)
    return model


def state_from_bytes(data: bytes) -> StateDict:
    buf = io.BytesIO(data)
    return safetensors.torch.load(buf.getvalue())
