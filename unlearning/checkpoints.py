"""Safe checkpoint reading and writing.

Uploaded files are never unpickled as code: safetensors is parsed as data, and a ``.pt`` file only
goes through ``torch.load(weights_only=True)``, which refuses any global it does not allow-list.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import warnings
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


def read_state_dict(path: Path) -> StateDict:
    """Read tensors from an uploaded file, without executing code."""
    with path.open("rb") as fh:
        head = fh.read(16)
    if sniff_format(head) == "safetensors":
        return _read_safetensors(path)
    return _read_torch(path)


def _read_safetensors(path: Path) -> StateDict:
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (safetensors.SafetensorError, json.JSONDecodeError, ValueError, OSError) as exc:
        raise CheckpointError("checkpoint_unreadable", f"invalid safetensors file: {exc}") from exc


def _read_torch(path: Path) -> StateDict:
    _refuse_escaping_members(path)
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


def fit_problems(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Every reason the tensors cannot be loaded into ``model`` (which may live on meta)."""
    expected = model.state_dict()
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
    problems = fit_problems(model, state)
    if problems:
        raise CheckpointError("checkpoint_mismatch", "; ".join(problems[:5]), problems)
    model.load_state_dict(dict(state), strict=True)
    return model


def state_from_bytes(data: bytes) -> StateDict:
    buf = io.BytesIO(data)
    return safetensors.torch.load(buf.getvalue())
