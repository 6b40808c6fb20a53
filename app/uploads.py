"""Receive an uploaded file into a temporary file, enforcing the size limit; the limits on how
far an uploaded archive may inflate."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import UploadFile

from app.config import get_settings
from app.errors import EmptyUpload, PayloadTooLarge, UploadInflatesTooFar
from unlearning import archives

CHUNK = 1024 * 1024
# The upload routes' 413: the body itself, or the archive it holds once inflated.
TOO_LARGE: dict[str, Any] = {
    **PayloadTooLarge.openapi(),
    "description": f"{PayloadTooLarge.title} (code `{PayloadTooLarge.code}`), or an archive "
    f"that inflates too far (code `{UploadInflatesTooFar.code}`)",
}


def inflate_limits() -> archives.InflateLimits:
    """How far an uploaded archive may inflate (NEPENTHE_MAX_INFLATED_BYTES and
    NEPENTHE_MAX_COMPRESSION_RATIO)."""
    settings = get_settings()
    return archives.InflateLimits(settings.max_inflated_bytes, settings.max_compression_ratio)


@contextmanager
def received(upload: UploadFile) -> Iterator[Path]:
    """The upload as a local file, deleted afterwards whatever happens."""
    limit = get_settings().max_upload_bytes
    if upload.size is not None and upload.size > limit:
        raise PayloadTooLarge(f"the upload exceeds {limit} bytes", limit_bytes=limit)
    with tempfile.NamedTemporaryFile(prefix="nepenthe-upload-") as tmp:
        written = 0
        while chunk := upload.file.read(CHUNK):
            written += len(chunk)
            if written > limit:
                raise PayloadTooLarge(f"the upload exceeds {limit} bytes", limit_bytes=limit)
            tmp.write(chunk)
        if written == 0:
            raise EmptyUpload("the uploaded file is empty")
        tmp.flush()
        yield Path(tmp.name)
