"""Shared by the benchmarks' reports (run as scripts: ``python bench/NAME.py`` puts this folder
on the import path)."""

from __future__ import annotations

import platform
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the HTTP benchmarks never load it
    import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it times that work."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"CPU ({platform.processor() or platform.machine()}, {n} thread{'s' * (n != 1)})"


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


def write_backend_section(
    docs: Path, heading: str, intro: str, sub: str, backend: str, titles: dict[str, str]
) -> None:
    """Put ``sub``, the subsection of ``backend`` (headed ``### titles[backend]``), in the
    section ``heading`` of ``docs``: it replaces that backend's previous subsection; the other
    backends' and a hand-written ``### Findings`` are kept, in that order. A new section is
    appended."""
    order = [*titles.values(), "Findings"]
    doc = docs.read_text()
    start = doc.find(f"\n{heading}\n")
    parts: dict[str, str] = {}
    if start != -1:
        end = doc.find("\n## ", start + len(heading) + 2)
        existing = doc[start + 1 : end + 1] if end != -1 else doc[start + 1 :]
        for chunk in existing.split("\n### ")[1:]:
            title = chunk.split("\n", 1)[0]
            if title in order:
                parts[title] = "### " + chunk.rstrip("\n") + "\n"
    parts[titles[backend]] = sub.rstrip("\n") + "\n"
    body = "\n".join(parts[title] for title in order if title in parts)
    text = f"{heading}\n\n{intro}\n{body}"
    if start == -1:
        docs.write_text(doc.rstrip("\n") + "\n\n" + text)
        return
    rest = doc[end + 1 :] if end != -1 else ""
    docs.write_text(doc[: start + 1] + text + ("\n" + rest if rest else ""))


def write_section(docs: Path, heading: str, text: str) -> None:
    """Put ``text`` (starting with ``heading``) in place of the section ``heading`` of ``docs``,
    keeping a hand-written ``### Findings`` at its end; a new section is appended."""
    doc = docs.read_text()
    start = doc.find(f"\n{heading}\n")
    if start == -1:
        docs.write_text(doc.rstrip("\n") + "\n\n" + text)
        return
    end = doc.find("\n## ", start + len(heading) + 2)
    end = len(doc) if end == -1 else end
    old = doc[start + 1 : end]
    findings = ""
    if "\n### Findings\n" in old:
        findings = "\n" + old[old.index("\n### Findings\n") + 1 :].rstrip("\n") + "\n"
    docs.write_text(doc[: start + 1] + text + findings + doc[end:])


def section_text(heading: str, intro: str, command: str, machine: str, lines: list[str]) -> str:
    """A benchmark's section: what it does, the command, the machine and date, the table."""
    body = [wrap(intro), "", "```bash", command, "```", "", wrap(f"- *Machine*: {machine}.")]
    return heading + "\n\n" + "\n".join([*body, "", *lines, ""])
