"""Content-addressed checkpoint store on the local disk (root: ``models_store/``).

A file becomes visible under its final key only through an atomic rename of a fully written and
fsync'ed temporary file, so a crash never leaves a half-written checkpoint behind a key. The
database records keys, digests and sizes, never filesystem paths.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from app.config import get_settings


@dataclass(frozen=True)
class StoredObject:
    key: str
    sha256: str
    size: int


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def put_bytes(self, data: bytes, suffix: str) -> StoredObject:
        digest = hashlib.sha256(data).hexdigest()
        key = f"sha256/{digest[:2]}/{digest}{suffix}"
        target = self.path(key)
        if not target.exists():
            self._write_atomically(target, data)
        return StoredObject(key, digest, len(data))

    def path(self, key: str) -> Path:
        if ".." in Path(key).parts or key.startswith("/"):
            raise ValueError(f"bad storage key {key!r}")
        return self.root / key

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def _write_atomically(self, target: Path, data: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def get_store() -> LocalArtifactStore:
    return LocalArtifactStore(get_settings().store_dir)
