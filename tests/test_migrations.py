"""The migrations build the whole schema, match the ORM, and run down and up again."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.db import make_engine
from app.deletions.evidence import forget_spec_sha256
from app.orm import AuditEvent, Base, DeletionRequest, ModelVersion, Organization
from tests.conftest import alembic_config, reset_caches


@pytest.fixture(params=["sqlite", "pg"])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


def test_schema_matches_the_orm(url):
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert diff == []
    assert {t.name for t in Base.metadata.sorted_tables} <= tables


def test_downgrade_to_base_and_up_again(url):
    cfg = alembic_config(url)
    command.downgrade(cfg, "base")
    engine = make_engine(url)
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    command.upgrade(cfg, "head")
    engine = make_engine(url)
    with engine.connect() as conn:
        assert "deletion_request" in inspect(conn).get_table_names()
    engine.dispose()


def test_rows_written_before_organisations_move_to_a_default_one_with_a_valid_chain(url):
    """Upgrading a database that already holds models, requests and audit events."""
    cfg = alembic_config(url)
    command.downgrade(cfg, "base")
    command.upgrade(cfg, "0003")
    now = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO model (id, name, task, architecture, architecture_args, input_shape, "
                "normalization, class_names, created_at) VALUES ('m1', 'cnn', 'classification', "
                "'tiny_cnn', '{}', '[1, 8, 8]', '{}', '[]', :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO model_version (id, model_id, number, sha256, size_bytes, storage_key, "
                "source_format, created_at) VALUES ('v1', 'm1', 1, :sha, 1, 'k', 'safetensors', "
                ":now)"
            ),
            {"now": now, "sha": "a" * 64},
        )
        conn.execute(
            text(
                "INSERT INTO dataset (id, name, kind, class_names, train_count, test_count, "
                "created_at) VALUES ('d1', 'digits', 'sklearn_digits', '[]', 1, 1, :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO deletion_request (id, model_version_id, dataset_id, "
                "forget_classes, method, params, body_sha256, created_at, measure_relearn_time) "
                "VALUES ('r1', 'v1', 'd1', '[3]', 'unsir', '{}', :sha, :now, false)"
            ),
            {"now": now, "sha": "b" * 64},
        )
        conn.execute(
            text(
                "INSERT INTO model_version (id, model_id, number, sha256, size_bytes, "
                "storage_key, source_format, parent_version_id, created_at) "
                "VALUES ('v2', 'm1', 2, :sha, 1, 'k2', 'safetensors', 'v1', :now)"
            ),
            {"now": now, "sha": "c" * 64},
        )
        conn.execute(
            text(
                "INSERT INTO job (id, request_id, status, progress, attempts, created_at, "
                "updated_at, finished_at, output_version_id) "
                "VALUES ('j1', 'r1', 'succeeded', 1.0, 1, :now, :now, :now, 'v2')"
            ),
            {"now": now},
        )
        for action in ("model.registered", "deletion_request.created", "job.queued"):
            conn.execute(
                text(
                    "INSERT INTO audit_event (at, action, details) VALUES "
                    "(:now, :action, '{\"n\": 1}')"
                ),
                {"now": now, "action": action},
            )
    command.upgrade(cfg, "head")
    reset_caches()
    with Session(engine) as session:
        org = session.scalars(select(Organization)).one()
        assert org.name == "default"
        request = session.get(DeletionRequest, "r1")
        assert request is not None and request.org_id == org.id
        assert request.due_at == datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
        assert request.forget_spec_sha256 == forget_spec_sha256("d1", None, [3], None, None)
        assert request.receipt is None
        original, unlearned = session.get(ModelVersion, "v1"), session.get(ModelVersion, "v2")
        assert original is not None and unlearned is not None
        assert original.superseded_by_request_id == "r1"
        assert unlearned.superseded_at is None
        report = audit.verify(session, org.id)
        assert (report.ok, report.events_checked) == (True, 3)
        actions = [e.action for e in session.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
        assert actions == ["model.registered", "deletion_request.created", "job.queued"]
    with pytest.raises(DatabaseError, match="append-only"), engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_event"))
    engine.dispose()


def test_uploaded_digests_arrive_empty_on_existing_versions_and_leave_again(url):
    """0009 adds the uploaded file's SHA-256 and size: NULL for versions stored before (their
    uploaded bytes were never hashed), indexed, and gone again on downgrade with the rows kept."""
    cfg = alembic_config(url)
    command.downgrade(cfg, "0008")
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO organization (id, name, created_at) VALUES ('o1', 'acme', :now)"),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO model (id, org_id, name, task, architecture, architecture_args, "
                "input_shape, normalization, class_names, created_at) VALUES ('m1', 'o1', 'cnn', "
                "'classification', 'tiny_cnn', '{}', '[1, 8, 8]', '{}', '[]', :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO model_version (id, model_id, number, sha256, size_bytes, storage_key, "
                "source_format, created_at) VALUES ('v1', 'm1', 1, :sha, 7, 'k', 'safetensors', "
                ":now)"
            ),
            {"now": now, "sha": "a" * 64},
        )

    def columns() -> dict[str, dict[str, object]]:
        with engine.connect() as conn:
            found = inspect(conn)
            indexes = {i["name"] for i in found.get_indexes("model_version")}
            names = {c["name"] for c in found.get_columns("model_version")}
            row = conn.execute(text("SELECT * FROM model_version WHERE id = 'v1'")).mappings().one()
        return {"indexes": indexes, "names": names, "row": dict(row)}

    command.upgrade(cfg, "0009")
    after = columns()
    assert {"uploaded_sha256", "uploaded_size_bytes"} <= after["names"]
    assert "ix_model_version_uploaded_sha256" in after["indexes"]
    row = after["row"]
    assert (row["uploaded_sha256"], row["uploaded_size_bytes"]) == (None, None)
    assert (row["sha256"], row["size_bytes"]) == ("a" * 64, 7)
    command.downgrade(cfg, "0008")
    before = columns()
    assert not {"uploaded_sha256", "uploaded_size_bytes"} & before["names"]
    assert "ix_model_version_uploaded_sha256" not in before["indexes"]
    assert before["row"]["sha256"] == "a" * 64
    command.upgrade(cfg, "head")
    engine.dispose()
