"""Receive an uploaded file into a temporary file, enforcing the size limit."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import UploadFile

from app.config import get_settings
from app.errors import EmptyUpload, PayloadTooLarge

CHUNK = 1024 * 1024


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
