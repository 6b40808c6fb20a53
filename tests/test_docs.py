"""The docs cannot drift from the code: the settings table is what scripts/settings_doc.py writes
from ``Settings``, the error catalogue names exactly the codes the API raises, links resolve."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def settings_doc() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "settings_doc", ROOT / "scripts" / "settings_doc.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_table_is_the_generated_one():
    script = settings_doc()
    doc = (ROOT / "docs" / "operations.md").read_text()
    assert script.replace_table(doc, script.render_table()) == doc, (
        "docs/operations.md's settings table differs from app/config.py: "
        "run .venv/bin/python scripts/settings_doc.py"
    )


def test_settings_table_has_a_row_per_setting():
    from app.config import Settings

    table = settings_doc().render_table()
    for name in Settings.model_fields:
        assert f"| `NEPENTHE_{name.upper()}` |" in table


def raised_codes() -> set[str]:
    """Every ``code`` a problem document of the API can carry."""
    import app.main  # noqa: F401 - imports every module that defines an error
    from app.errors import ServiceError

    codes: set[str] = set()
    pending = [ServiceError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        codes.add(cls.code)
    # Base classes whose code is always refined per instance (or never raised as such).
    codes -= {"bad_request", "invalid_checkpoint", "invalid_dataset"}
    sources = [ROOT / "app" / "errors.py", ROOT / "app" / "main.py", ROOT / "app" / "middleware.py"]
    sources += [ROOT / "app" / "observability" / "router.py"]
    for path in sources:  # codes the handlers write themselves
        codes |= set(re.findall(r'"([a-z]+(?:_[a-z]+)+)",\n?\s*"[A-Z]', path.read_text()))
        codes |= set(re.findall(r'^\s+\d{3}: "([a-z_]+)",$', path.read_text(), re.M))
    for path in (ROOT / "app").rglob("*.py"):  # codes given per instance
        codes |= set(re.findall(r'code="([a-z_]+)"', path.read_text()))
    # The library's checkpoint and dataset readers, whose codes the API passes on (the job
    # pipeline's own DatasetErrors fail a job instead: they are no API answer).
    for name in ("checkpoints.py", "data.py"):
        text = (ROOT / "unlearning" / name).read_text()
        codes |= set(re.findall(r'(?:Checkpoint|Dataset)Error\(\s*"([a-z_]+)"', text))
    # Reachable only past the schema, which answers validation_error first.
    return codes - {"dataset_location_missing", "dataset_kind_unknown"}


def catalogued_codes() -> set[str]:
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    codes: set[str] = set()
    for line in section.splitlines():
        if re.match(r"^\| \d{3} \|", line):
            codes |= set(re.findall(r"`([a-z_]+)`", line.split("|")[2]))
    return codes


def test_error_catalogue_matches_the_code():
    raised, listed = raised_codes(), catalogued_codes()
    assert "database_unavailable" in raised and "checkpoint_unsafe" in raised  # the scan works
    assert raised - listed == set(), "raised but not in docs/api.md's catalogue"
    assert listed - raised == set(), "in docs/api.md's catalogue but never raised"


def test_relative_links_resolve():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert broken == []


def test_anchors_within_the_docs_resolve():
    def anchors(doc: Path) -> set[str]:
        heads = re.findall(
            r"^#+ (.+)$", re.sub(r"```.*?```", "", doc.read_text(), flags=re.S), re.M
        )
        return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}

    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]*#[^)\s]+)\)", doc.read_text()):
            file, anchor = target.split("#", 1)
            path = (doc.parent / file).resolve() if file else doc
            if not path.exists():
                continue
            if anchor not in anchors(path):
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert broken == []


def test_readme_stays_short_and_keeps_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 300
    for command in ("./scripts/demo.sh", "./scripts/test.sh", "uvicorn app.main:app"):
        assert command in readme
    assert "celery -A workers.celery_app worker" in readme
    assert (ROOT / "scripts" / "demo.sh").is_file() and (ROOT / "scripts" / "test.sh").is_file()
