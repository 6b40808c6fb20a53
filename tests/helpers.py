"""Builders shared by the tests: a small trained digits classifier and its registration."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import safetensors.torch
import torch

from unlearning import architectures, data
from unlearning.train import train_classifier

SPEC = data.InputSpec((1, 8, 8), (0.5,), (0.5,))
ARCH = {"name": "tiny_cnn", "args": {"in_channels": 1}}
CLASS_NAMES = [str(i) for i in range(10)]
SMALL_DATA_PARAMS = {"repair_epochs": 3, "repair_batch_size": 32, "seed": 0}


def model_body(name: str = "digits-cnn") -> dict[str, Any]:
    return {
        "name": name,
        "task": "classification",
        "architecture": ARCH,
        "input_shape": [1, 8, 8],
        "normalization": {"mean": [0.5], "std": [0.5]},
        "class_names": CLASS_NAMES,
    }


@lru_cache
def trained_state() -> dict[str, torch.Tensor]:
    """tiny_cnn trained on the digits train split (about 2 s on CPU); cached per process."""
    train = data.open_split("sklearn_digits", None, "train")
    torch.manual_seed(0)
    model = architectures.build_classifier("tiny_cnn", 10, {"in_channels": 1})
    train_classifier(model, train, np.arange(len(train)), SPEC, epochs=15, lr=3e-3, batch_size=64)
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_model() -> torch.nn.Module:
    model = architectures.build_classifier("tiny_cnn", 10, {"in_channels": 1})
    model.load_state_dict(trained_state())
    return model


def safetensors_bytes(state: dict[str, torch.Tensor] | None = None) -> bytes:
    return safetensors.torch.save(state or trained_state())


def torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def assert_forgotten_toward_held_out(before: dict[str, Any], after: dict[str, Any]) -> None:
    """``unlearning.verify.measure`` reports of a sample deletion: the forgotten samples' entropy
    membership score fell and now sits nearer the held-out level than the training level, while
    retain accuracy stays within 2 points."""
    mia_before, mia_after = before["mia"]["entropy"], after["mia"]["entropy"]
    score = mia_after["forget_member_score"]
    assert score < mia_before["forget_member_score"]
    assert abs(score - mia_after["test_member_score"]) < abs(
        score - mia_after["retain_member_score"]
    )
    assert after["retain_accuracy"] >= before["retain_accuracy"] - 0.02


@lru_cache
def i2i_trained_state() -> dict[str, torch.Tensor]:
    """The demo's masked autoencoder trained to inpaint digits (about 15 s); cached per process."""
    from client.demo_i2i import train_original

    return train_original()


# Zip archives written byte by byte, so that a test can make one whose directory declares what it
# likes: a compression bomb (truthful or not), or a member that inflates past its declared size.

MiB = 1024 * 1024


@lru_cache
def _zeros_block() -> bytes:
    """1 MiB of zeros deflated to about 1 kB, ending on a full flush so that copies of it make
    one valid deflate stream."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflater.compress(bytes(MiB)) + deflater.flush(zlib.Z_FULL_FLUSH)


def deflated_zeros(mib: int, prefix: bytes = b"") -> tuple[bytes, int]:
    """A raw deflate stream of ``prefix`` then ``mib`` MiB of zeros (about 1 kB a MiB) and its
    CRC-32: a compression bomb built without holding what it inflates to."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = deflater.compress(prefix) + deflater.flush(zlib.Z_FULL_FLUSH) if prefix else b""
    crc, block = zlib.crc32(prefix), bytes(MiB)
    for _ in range(mib):
        crc = zlib.crc32(block, crc)
    # After a full flush a deflater starts afresh: the block's bytes follow as they are.
    return head + _zeros_block() * mib + b"\x03\x00", crc  # \x03\x00: an empty final block


@dataclass(frozen=True)
class Member:
    """A zip member as written: ``data`` as stored (deflated when ``deflated``), and the inflated
    size and CRC-32 the archive declares for it."""

    name: str
    data: bytes
    size: int
    crc: int
    deflated: bool = True


def member(name: str, content: bytes, deflated: bool = False) -> Member:
    """A truthful member holding ``content``."""
    if not deflated:
        return Member(name, content, len(content), zlib.crc32(content), deflated=False)
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = deflater.compress(content) + deflater.flush()
    return Member(name, data, len(content), zlib.crc32(content))


def zeros_member(name: str, mib: int, declared: int | None = None, prefix: bytes = b"") -> Member:
    """A member of ``prefix`` and ``mib`` MiB of zeros, declared at that size (a truthful bomb)
    or at ``declared`` bytes, with the CRC of that many of its first bytes (a lying one)."""
    data, crc = deflated_zeros(mib, prefix)
    if declared is None:
        return Member(name, data, len(prefix) + mib * MiB, crc)
    start = (prefix + bytes(max(0, declared - len(prefix))))[:declared]
    return Member(name, data, declared, zlib.crc32(start))


def raw_zip(members: list[Member]) -> bytes:
    """A zip archive (no zip64: members under 4 GiB) of ``members``, sizes as they declare."""
    out, central = io.BytesIO(), io.BytesIO()
    for m in members:
        name, method = m.name.encode(), 8 if m.deflated else 0
        offset = out.tell()
        out.write(
            struct.pack(
                "<IHHHHHIIIHH",
                0x04034B50,
                20,
                0,
                method,
                0,
                33,
                m.crc,
                len(m.data),
                m.size,
                len(name),
                0,
            )
        )
        out.write(name + m.data)
        central.write(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                0,
                method,
                0,
                33,
                m.crc,
                len(m.data),
                m.size,
                len(name),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
        )
        central.write(name)
    start, directory = out.tell(), central.getvalue()
    out.write(directory)
    out.write(
        struct.pack(
            "<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(directory), start, 0
        )
    )
    return out.getvalue()


def torch_members(obj: object, deflated: bool = False) -> list[Member]:
    """The members of ``torch.save(obj)``'s archive, as they are or deflated."""
    archive = zipfile.ZipFile(io.BytesIO(torch_bytes(obj)))
    return [member(i.filename, archive.read(i), deflated) for i in archive.infolist()]


def largest_storage(members: list[Member]) -> int:
    """The index of the largest tensor storage member (``<archive>/data/<n>``)."""
    storages = [i for i, m in enumerate(members) if "/data/" in m.name]
    return max(storages, key=lambda i: members[i].size)
