"""Shared by the benchmarks' reports (run as scripts: ``python bench/NAME.py`` puts this folder
on the import path)."""

from __future__ import annotations

import platform
import textwrap
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def wrap(line: str) -> str:
    """Prose at the document's width; tables, code and commands as they are."""
    if len(line) <= 100 or line.startswith(("|", "```", ".venv/")):
        return line
    indent = "  " if line.startswith("- ") else ""
    return textwrap.fill(
        line, width=100, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False
    )


def documented(argv: list[str], dropped: tuple[str, ...] = ()) -> list[str]:
    """The command line without ``--out PATH`` (a file of this run only) and the ``dropped``
    flags (what only this run's files and docs need)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out=") and arg not in dropped:
            kept.append(arg)
    return kept
