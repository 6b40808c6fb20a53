"""What the end-to-end tests share: a client of real API and worker processes, a browser."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from client.api import NepentheClient
from client.local import LocalService
from tests.conftest import ROOT


@pytest.fixture
def service(service_env: dict[str, str], tmp_path: Path) -> Iterator[LocalService]:
    """API and worker processes started for the test (their logs under tmp_path)."""
    with LocalService(service_env, ROOT, tmp_path / "logs") as running:
        yield running


@pytest.fixture
def client(service: LocalService) -> Iterator[NepentheClient]:
    """An admin's client of the test's service."""
    api = NepentheClient(service.url, service.admin_key)
    yield api
    api.close()


CHROMIUM = Path(os.environ.get("NEPENTHE_TEST_CHROMIUM", "/usr/bin/chromium"))


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright (scripts/browser.sh installs it; a
    missing browser fails the console tests, it never skips them)."""
    assert CHROMIUM.is_file(), f"no Chromium at {CHROMIUM}: run scripts/browser.sh"
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()
