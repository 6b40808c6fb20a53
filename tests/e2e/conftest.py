"""What the end-to-end tests share: a client of real API and worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from client.api import NepentheClient
from client.local import LocalService
from tests.conftest import ROOT


@pytest.fixture
def client(service_env: dict[str, str], tmp_path: Path) -> Iterator[NepentheClient]:
    """An admin's client of a service started for the test (its logs under tmp_path)."""
    with LocalService(service_env, ROOT, tmp_path / "logs") as running:
        api = NepentheClient(running.url, running.admin_key)
        yield api
        api.close()
