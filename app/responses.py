"""Responses shared by the routers."""

from __future__ import annotations

from fastapi.responses import FileResponse


class StoredFileResponse(FileResponse):
    """A stored file (a checkpoint, an artifact, an image), sent in 1 MiB pieces.

    Starlette's 64 KiB default made a 45 MB checkpoint about 700 reads, each in a worker thread,
    and 700 messages through every middleware: about 73 ms of the API's CPU per download, so one
    API process served about 600-800 MB/s (bench/capacity.py).
    """

    chunk_size = 1024 * 1024
