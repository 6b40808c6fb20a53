"""Transactions behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db import make_engine
from app.orm import Organization
from tests.api.test_bad_input import submit
from tests.conftest import BACKENDS


@pytest.fixture(params=["sqlite", "pg"])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


def count(url: str) -> int:
    engine = make_engine(url)
    with Session(engine) as session:
        n = int(session.scalar(select(func.count()).select_from(Organization)) or 0)
    engine.dispose()
    return n


def test_a_savepoint_taken_first_is_undone_by_the_outer_rollback(url):
    # The sqlite3 driver, left alone, turns this RELEASE SAVEPOINT into a real COMMIT.
    engine = make_engine(url)
    with Session(engine) as session:
        with session.begin_nested():
            session.add(Organization(name="test.nested"))
        session.rollback()
    engine.dispose()
    assert count(url) == 0


def test_a_failed_savepoint_keeps_the_outer_work(url):
    engine = make_engine(url)
    with Session(engine) as session:
        session.add(Organization(name="test.outer"))
        session.flush()
        nested = session.begin_nested()
        session.add(Organization(name="test.inner"))
        session.flush()
        nested.rollback()
        session.commit()
    engine.dispose()
    assert count(url) == 1


def test_only_transient_database_errors_are_503(tmp_path):
    """A locked SQLite file passes with time (503, retry); a missing column does not (500)."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from app.errors import _is_transient

    def error(message: str) -> OperationalError:
        return OperationalError("SELECT 1", {}, sqlite3.OperationalError(message))

    assert _is_transient(error("database is locked"))
    assert not _is_transient(error("no such column: job.lease_id"))


@pytest.mark.parametrize("service_env", BACKENDS, indirect=True)
def test_reads_are_not_blocked_by_a_writer_holding_its_transaction(api, registered):
    from app.db import session_scope
    from app.orm import Model

    job_id = submit(api, registered).json()["job"]["id"]
    with session_scope() as writer:  # holds the write lock (SQLite) until the block ends
        writer.execute(update(Model).values(task="classification"))
        assert api.get(f"/v1/jobs/{job_id}").status_code == 200
        assert api.get("/v1/models").status_code == 200
        assert api.get("/healthz").status_code == 200
