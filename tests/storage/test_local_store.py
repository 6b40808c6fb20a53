"""The local store: a file appears under its key whole or not at all."""

from __future__ import annotations

import errno
import os

import pytest

from app.storage import LocalArtifactStore


def test_a_write_that_fails_midway_leaves_no_file(tmp_path, monkeypatch):
    store = LocalArtifactStore(tmp_path)

    def disk_full(fd: int) -> None:  # the bytes went out, the flush to disk fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.put_bytes(b"x" * 100_000, ".safetensors")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # neither target nor partial
    monkeypatch.undo()
    stored = store.put_bytes(b"x" * 100_000, ".safetensors")
    assert stored.created and store.local_path(stored.key).read_bytes() == b"x" * 100_000
    assert store.put_bytes(b"x" * 100_000, ".safetensors").created is False  # already there
