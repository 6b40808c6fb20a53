"""The installed ``nepenthe-admin`` on a fresh database: it migrates the schema itself, then
makes a key that the API accepts (a user once got ``no such table: organization`` here)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select

from app.db import make_engine
from app.orm import ApiKey, Organization
from tests.conftest import ROOT, create_pg_database, drop_pg_database, reset_caches

ADMIN = ROOT / ".venv" / "bin" / "nepenthe-admin"


@pytest.fixture(params=["sqlite", "pg"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database no migration has touched."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh' / 'nepenthe.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    url = create_pg_database(server)
    try:
        yield url
    finally:
        drop_pg_database(server, url)


def admin(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The entry point as an operator runs it, from a folder other than the checkout."""
    env = {
        **os.environ,
        "NEPENTHE_DATABASE_URL": url,
        "NEPENTHE_SIGNING_KEY_FILE": str(tmp_path / "signing-key.pem"),
    }
    return subprocess.run(
        [str(ADMIN), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


def test_create_key_on_a_fresh_database_migrates_it_and_the_key_works(
    fresh_url, tmp_path, monkeypatch
):
    done = admin(tmp_path, fresh_url, "create-key", "--org", "acme", "--create-org")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("nep_")
    assert "\n" not in token  # stdout is the token alone: scripts capture it
    assert "database schema migrated from empty to" in done.stderr

    engine = make_engine(fresh_url)
    with engine.connect() as conn:
        assert "audit_event" in inspect(conn).get_table_names()
        org = conn.execute(select(Organization.id).where(Organization.name == "acme")).scalar()
        keys = conn.execute(select(ApiKey.id).where(ApiKey.org_id == org)).scalars().all()
    engine.dispose()
    assert org is not None
    assert len(keys) == 1

    # The API on that database accepts the key (admin scope: it may list the keys).
    monkeypatch.setenv("NEPENTHE_DATABASE_URL", fresh_url)
    monkeypatch.setenv("NEPENTHE_SIGNING_KEY_FILE", str(tmp_path / "signing-key.pem"))
    monkeypatch.setenv("NEPENTHE_STORE_DIR", str(tmp_path / "store"))
    reset_caches()
    from app.main import create_app

    try:
        with TestClient(create_app()) as client:
            listed = client.get("/v1/keys", headers={"Authorization": f"Bearer {token}"})
    finally:
        reset_caches()
    assert listed.status_code == 200, listed.text
    assert [k["id"] for k in listed.json()] == keys

    # Again, on the now current schema: nothing to migrate, the organisation is found.
    again = admin(tmp_path, fresh_url, "create-key", "--org", "acme", "--name", "ci")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().startswith("nep_")
    assert "migrated" not in again.stderr


def test_migrate_command_reports_the_revision(tmp_path):
    url = f"sqlite:///{tmp_path / 'nepenthe.db'}"
    first = admin(tmp_path, url, "migrate")
    assert first.returncode == 0, first.stderr
    assert "(was empty)" in first.stdout
    second = admin(tmp_path, url, "migrate")
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("database schema at ")
    assert "was" not in second.stdout


def test_an_unknown_organisation_is_refused_with_the_flag_to_pass(tmp_path):
    done = admin(tmp_path, f"sqlite:///{tmp_path / 'nepenthe.db'}", "create-key", "--org", "x")
    assert done.returncode != 0
    assert "--create-org" in done.stderr
