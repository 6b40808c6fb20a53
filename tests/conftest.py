"""Shared fixtures: real PostgreSQL, Redis and SQLite; schemas built by running the migrations."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from client.databases import (
    PG_ADMIN,
    REDIS_URL,
    ROOT,
    create_pg_database,
    drop_pg_database,
    migrate,
    reset_caches,
)
from client.databases import alembic_config as alembic_config
from tests.helpers import model_body, safetensors_bytes

FASHION_ROOT = Path(os.environ.get("NEPENTHE_TEST_FASHION_ROOT", ROOT / "var" / "data"))


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The real server; its absence is a failure, never a skip."""
    with psycopg.connect(PG_ADMIN, connect_timeout=5) as conn:
        conn.execute("SELECT 1")
    return PG_ADMIN


@pytest.fixture
def pg_url(postgres_server: str) -> Iterator[str]:
    url = create_pg_database(postgres_server)
    try:
        migrate(url)
        yield url
    finally:
        drop_pg_database(postgres_server, url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'nepenthe.db'}"
    migrate(url)
    return url


@pytest.fixture
def redis_broker() -> str:
    """The real Redis server. Not flushed: tests use queues of their own (service_env), and a
    flush would drop the messages of another run sharing the server."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    client.ping()
    client.close()
    return REDIS_URL


@pytest.fixture
def service_env(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """Settings for one backend: ``embedded`` (SQLite + filesystem) or ``production``."""
    backend = getattr(request, "param", "embedded")
    env = {
        "NEPENTHE_STORE_DIR": str(tmp_path / "store"),
        "NEPENTHE_BROKER_DIR": str(tmp_path / "broker"),
        "NEPENTHE_PROGRESS_INTERVAL_S": "0.1",
        "NEPENTHE_DEVICE": "cpu",
        "NEPENTHE_DATA_ROOTS": json.dumps([str(tmp_path), str(FASHION_ROOT.resolve())]),
        "NEPENTHE_SIGNING_KEY_FILE": str(tmp_path / "signing-key.pem"),
    }
    if backend == "production":
        env["NEPENTHE_DATABASE_URL"] = request.getfixturevalue("pg_url")
        env["NEPENTHE_BROKER_URL"] = request.getfixturevalue("redis_broker")
        # Queues of this test's own: a worker of another run sharing the Redis server (a
        # second checkout's tests) must not take this test's jobs, nor this one theirs.
        suffix = uuid.uuid4().hex[:12]
        env["NEPENTHE_TASK_QUEUE"] = f"unlearning-{suffix}"
        env["NEPENTHE_WEBHOOK_QUEUE"] = f"webhooks-{suffix}"
    else:
        env["NEPENTHE_DATABASE_URL"] = request.getfixturevalue("sqlite_url")
        env["NEPENTHE_BROKER_URL"] = "filesystem://"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_caches()
    yield env
    reset_caches()
    if backend == "production":  # this test's queues, with whatever nobody consumed
        with redis.Redis.from_url(env["NEPENTHE_BROKER_URL"]) as client:
            client.delete(env["NEPENTHE_TASK_QUEUE"], env["NEPENTHE_WEBHOOK_QUEUE"])


BACKENDS = ["embedded", "production"]


@pytest.fixture
def api(service_env: dict[str, str]) -> Iterator[TestClient]:
    """The app in-process over the real database of the backend that ``service_env`` names.

    Test modules choose backends with
    ``pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)``.
    """
    from app.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {new_key('acme')}"
        yield client


def new_key(org: str, *scopes: str) -> str:
    """A key of ``org`` (created when new) with ``scopes`` (default: admin), made as the
    operator makes the first one: with nepenthe-admin's function, on the configured database."""
    from app.actors import Scope
    from app.cli import create_key

    wanted = [Scope(s) for s in scopes] or [Scope.admin]
    return create_key(org, f"{org}-{'-'.join(wanted)}", wanted, create_org=True)


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
