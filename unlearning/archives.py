"""Checks on uploaded zip archives (torch ``.pt`` files, ``.npz`` datasets): member names, and
how far the archive inflates.

Neither reader extracts to disk today, but the store keeps the ``.npz`` upload as it came, and a
tool that unpacks it later (``unzip``, a notebook) would write a ``../`` or absolute member
outside its folder. Such an archive has no honest use, so it is refused at the door.
"""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# A Windows drive ("C:") or a UNC/absolute path counts as absolute: unzip tools on either system
# honour them.
_DRIVE = re.compile(r"^[A-Za-z]:")


def escapes(name: str) -> bool:
    """Whether extracting ``name`` into a folder could write outside it."""
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return True
    return ".." in re.split(r"[\\/]", name)


def escaping_members(names: Iterable[str]) -> list[str]:
    return [name for name in names if escapes(name)]


def escaping_members_of(path: Path) -> list[str]:
    """The member names of the zip archive at ``path`` that escape; [] for a non-zip file (the
    format's own reader reports that one)."""
    if not zipfile.is_zipfile(path):
        return []
    try:
        with zipfile.ZipFile(path) as archive:
            return escaping_members(archive.namelist())
    except (OSError, ValueError, zipfile.BadZipFile):
        return []


# Inflation: an archive may declare (and a lying one may hide) far more bytes than it holds. Both
# readers of uploads, numpy's (Python's zipfile) and torch's (miniz), allocate what the zip
# directory declares and then inflate into it, so the directory is checked first; each deflated
# member is then inflated here, counting and discarding, so that one whose data inflates past its
# declared size is refused rather than trusted.

INFLATES_TOO_FAR = "upload_inflates_too_far"
MAX_INFLATED_BYTES = 8 * 1024**3  # the most any reader here inflates one archive to
RATIO_FLOOR = 64 * 1024**2  # an archive may inflate this far whatever its compression ratio
_CHUNK = 1024 * 1024


class ArchiveError(ValueError):
    """An archive refused before (or while) inflating; ``code`` is ``upload_inflates_too_far``,
    or ``archive_unreadable`` for the format's reader to report as its own unreadable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class InflateLimits:
    """How far one archive may inflate: ``max_bytes`` in all, and, past RATIO_FLOOR, at most
    ``max_ratio`` times the archive's own size (None: no ratio bound)."""

    max_bytes: int
    max_ratio: float | None = None


DEFAULT_LIMITS = InflateLimits(MAX_INFLATED_BYTES)


def mib(n: float) -> str:
    return f"{n / 1024**2:.1f} MiB"


def check_directory(path: Path, limits: InflateLimits) -> int:
    """The bytes the zip archive at ``path`` declares once inflated, refused (ArchiveError) past
    ``limits``; read from the central directory alone, nothing is inflated."""
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    declared = sum(info.file_size for info in infos)
    if declared > limits.max_bytes:
        raise ArchiveError(
            INFLATES_TOO_FAR,
            f"the archive's members inflate to {declared} bytes ({mib(declared)}), more than the "
            f"{limits.max_bytes} bytes ({mib(limits.max_bytes)}) an upload may inflate to",
        )
    size = path.stat().st_size
    if limits.max_ratio is not None and declared > max(RATIO_FLOOR, limits.max_ratio * size):
        raise ArchiveError(
            INFLATES_TOO_FAR,
            f"the archive's {mib(size)} inflate to {mib(declared)}, {declared / size:.0f} times "
            f"its size: past {mib(RATIO_FLOOR)}, an upload may inflate to at most "
            f"{limits.max_ratio:g} times its size",
        )
    for info in infos:
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ArchiveError(
                "archive_unreadable",
                f"member {info.filename!r} is compressed with zip method {info.compress_type}; "
                "only stored and deflated members are read",
            )
    return declared


def check_streams(path: Path) -> None:
    """Inflate every deflated member, counting and discarding, and refuse (ArchiveError) one that
    inflates past the size the directory declares for it: the readers would stop there, but an
    archive that lies about its sizes is refused rather than read. Holds one chunk at a time;
    a corrupt stream is left for the format's reader to report."""
    with zipfile.ZipFile(path) as archive:
        infos = [i for i in archive.infolist() if i.compress_type == zipfile.ZIP_DEFLATED]
    end = path.stat().st_size
    with path.open("rb") as fh:
        for info in infos:
            inflated = _inflated_up_to(fh, info, end, info.file_size + 1)
            if inflated > info.file_size:
                raise ArchiveError(
                    INFLATES_TOO_FAR,
                    f"member {info.filename!r} inflates past the {info.file_size} bytes the "
                    "archive declares for it",
                )


def check_inflation(path: Path, limits: InflateLimits) -> int:
    """check_directory, then check_streams: the declared inflated bytes, once both passed."""
    declared = check_directory(path, limits)
    check_streams(path)
    return declared


def _inflated_up_to(fh: BinaryIO, info: zipfile.ZipInfo, end: int, cap: int) -> int:
    """How many bytes the member's deflate stream inflates to, counting stopped at ``cap``."""
    fh.seek(info.header_offset)
    local = fh.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        return 0  # a broken archive: its reader says so
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    fh.seek(start)
    left = max(0, min(info.compress_size, end - start))
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated, pending = 0, b""
    try:
        while inflated < cap and not inflater.eof:
            if not pending and left:
                pending = fh.read(min(_CHUNK, left))
                left = left - len(pending) if pending else 0
            # max_length keeps each step to a chunk; the input it leaves waits in the tail.
            out = inflater.decompress(pending, min(_CHUNK, cap - inflated))
            pending = inflater.unconsumed_tail
            inflated += len(out)
            if not (out or pending or left):
                break
    except zlib.error:
        pass  # corrupt data: the reader refuses it as unreadable
    return inflated
