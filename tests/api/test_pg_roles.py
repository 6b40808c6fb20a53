"""On PostgreSQL the service can run as a role that is not the tables' owner
(scripts/pg_app_role.sql): it works, and it can neither change audit rows nor switch their guard
off."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.api.test_audit_chain import verification
from tests.conftest import PG_ADMIN


@pytest.mark.parametrize("service_env", ["production"], indirect=True)
def test_the_service_runs_as_a_role_that_cannot_touch_audit_rows_or_their_guard(
    service_env, monkeypatch
):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.conftest import ROOT, new_key, reset_caches

    url = service_env["NEPENTHE_DATABASE_URL"]
    dbname, role = url.rsplit("/", 1)[1], f"nepenthe_app_{uuid.uuid4().hex[:10]}"
    owner = PG_ADMIN.rsplit("/", 1)[0] + "/" + dbname
    grants = (ROOT / "scripts" / "pg_app_role.sql").read_text().replace(':"role"', f'"{role}"')
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        for line in grants.splitlines():
            if line.startswith(("GRANT", "REVOKE")):
                conn.execute(line)
    try:
        as_role = make_url(url).set(username=role).render_as_string(hide_password=False)
        monkeypatch.setenv("NEPENTHE_DATABASE_URL", as_role)
        reset_caches()
        with TestClient(create_app(), raise_server_exceptions=False) as api:
            api.headers["Authorization"] = f"Bearer {new_key('acme')}"
            assert (
                api.post(
                    "/v1/datasets", json={"name": "digits", "kind": "sklearn_digits"}
                ).status_code
                == 201
            )
            assert verification(api)["ok"] is True
        plain = f"postgresql://{role}@127.0.0.1:5432/{dbname}"
        with psycopg.connect(plain, autocommit=True) as conn:
            for statement in (
                "UPDATE audit_event SET action = 'x'",
                "DELETE FROM audit_event",
                "TRUNCATE audit_event CASCADE",
                "ALTER TABLE audit_event DISABLE TRIGGER USER",
            ):
                # The grant refuses it before the trigger would (its error is not "append-only").
                refused = r"permission denied|must be owner"
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match=refused):
                    conn.execute(statement)
    finally:
        reset_caches()
        with psycopg.connect(owner, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')
