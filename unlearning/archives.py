"""Checks on the member names of uploaded zip archives (torch ``.pt`` files, ``.npz`` datasets).

Neither reader extracts to disk today, but the store keeps the ``.npz`` upload as it came, and a
tool that unpacks it later (``unzip``, a notebook) would write a ``../`` or absolute member
outside its folder. Such an archive has no honest use, so it is refused at the door.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

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
