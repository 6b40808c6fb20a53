from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.helpers import model_body, safetensors_bytes

BACKENDS = ["embedded", "production"]


@pytest.fixture
def api(service_env: dict[str, str]) -> Iterator[TestClient]:
    """The app in-process over the real database of the backend that ``service_env`` names.

    Test modules choose backends with
    ``pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)``.
    """
    from app.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield client


def snapshot(store: Path) -> dict[str, Any]:
    """Row counts of every table and the files in the store: 'nothing left behind' checks."""
    from app.db import get_sessionmaker
    from app.orm import Base

    with get_sessionmaker()() as session:
        counts = {
            t.name: session.scalar(select(func.count()).select_from(t))
            for t in Base.metadata.sorted_tables
        }
    files = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
    return {"rows": counts, "files": files}


@pytest.fixture
def store(service_env: dict[str, str]) -> Path:
    path = Path(service_env["NEPENTHE_STORE_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def registered(api: TestClient) -> dict[str, Any]:
    """A model with one trained version and the digits dataset."""
    model = api.post("/v1/models", json=model_body()).json()
    files = {"file": ("m.safetensors", safetensors_bytes(), "application/octet-stream")}
    version = api.post(f"/v1/models/{model['id']}/versions", files=files).json()
    dataset = api.post("/v1/datasets", json={"name": "digits", "kind": "sklearn_digits"}).json()
    return {"model": model, "version": version, "dataset": dataset}
