"""The error catalogue: every ServiceError lives in app/errors.py, and a code has one status."""

from __future__ import annotations

import app.main  # noqa: F401 - imports every module that could define an error
from app.errors import ServiceError


def every_error() -> list[type[ServiceError]]:
    found: list[type[ServiceError]] = []
    pending = [ServiceError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_each_code_names_one_error_with_one_status():
    # A subclass that keeps its parent's code (StoreConfigurationError) is the same answer to
    # clients, a finer type for Python callers: it must keep the status too.
    owners: dict[str, list[str]] = {}
    statuses: dict[str, set[int]] = {}
    for cls in every_error():
        if "code" in vars(cls):
            owners.setdefault(cls.code, []).append(cls.__qualname__)
        statuses.setdefault(cls.code, set()).add(cls.status)
    assert {c: o for c, o in owners.items() if len(o) > 1} == {}
    assert {c: s for c, s in statuses.items() if len(s) > 1} == {}


def test_every_error_is_defined_in_the_catalogue():
    elsewhere = [f"{c.__module__}.{c.__qualname__}" for c in every_error()]
    assert [name for name in elsewhere if not name.startswith("app.errors.")] == []


def test_a_superseded_input_is_a_conflict_and_a_superseded_download_is_gone():
    from app.errors import InputSuperseded, VersionSuperseded

    assert (InputSuperseded.status, InputSuperseded.code) == (409, "input_superseded")
    assert (VersionSuperseded.status, VersionSuperseded.code) == (410, "version_superseded")
