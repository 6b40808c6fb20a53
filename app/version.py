"""The code version that evidence names: the package version and, from a checkout, its commit."""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path


@lru_cache
def code_version() -> str:
    try:
        version = metadata.version("nepenthe")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    commit = os.environ.get("NEPENTHE_BUILD_COMMIT") or _git_commit()
    return f"{version}+g{commit}" if commit else version


def _git_commit() -> str | None:
    """The checkout's commit, with "-dirty" when tracked files differ from it; None outside git."""
    head = _git("rev-parse", "--short=12", "HEAD")
    if not head:
        return None
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{head}-dirty" if dirty else head


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(["git", *args], cwd=root, timeout=5, capture_output=True, text=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
