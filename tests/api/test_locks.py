"""Locks: SQLite's single write lock is never held through slow work a request does, and no
PostgreSQL row lock a transaction takes makes another's audit append wait on it."""

from __future__ import annotations

import pytest

from tests.api.test_bad_input import submit
from unlearning import data


@pytest.mark.parametrize("service_env", ["embedded"], indirect=True)
def test_no_write_lock_is_held_while_a_sample_request_reads_its_dataset(
    api, registered, service_env, monkeypatch
):
    """SQLite: while the training split loads (seconds, for a large archive), another
    connection can write at once, without waiting on a busy timeout."""
    import sqlite3

    from app.deletions import service

    path = service_env["NEPENTHE_DATABASE_URL"].split("///", 1)[1]
    real = service.data.open_split
    writes: list[str] = []

    def open_split_and_write_meanwhile(*args, **kwargs):
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # fails at once if the request holds the lock
            other.execute("ROLLBACK")
            writes.append("ok")
        except sqlite3.OperationalError as exc:
            writes.append(str(exc))
        finally:
            other.close()
        return real(*args, **kwargs)

    monkeypatch.setattr(service.data, "open_split", open_split_and_write_meanwhile)
    train_ids = list(data.open_split("sklearn_digits", None, "train").ids[:3])
    response = submit(
        api, registered, forget_classes=None, forget_samples=train_ids, method="salun"
    )
    assert response.status_code == 202, response.text
    assert writes and set(writes) == {"ok"}


def _lock_org(session, org_id, model_id):
    from app.quotas.repository import lock_org

    lock_org(session, org_id)


def _lock_model(session, org_id, model_id):
    from app.models.repository import lock_model

    lock_model(session, model_id)


@pytest.mark.parametrize("service_env", ["production"], indirect=True)
@pytest.mark.parametrize("hold", [_lock_org, _lock_model], ids=["quota lock", "model lock"])
def test_an_audit_event_is_appended_while_another_transaction_holds_the_rows_it_names(
    api, registered, hold
):
    """A submission counting its quota (or a job publishing under its model) holds a row lock
    until it commits, when it locks the chain head. An audit event naming that row, appended
    meanwhile by another transaction, must not wait for it while holding the head: the two
    would deadlock (it aborted submissions with 503 under load)."""
    from sqlalchemy import text

    from app.actors import Actor
    from app.audit import service as audit
    from app.db import session_scope

    model, org_id = registered["model"], api.get("/v1/whoami").json()["org_id"]
    with session_scope() as holder:
        hold(holder, org_id, model["id"])
        with session_scope() as writer:
            # Waiting on the holder (in this same thread) can only end by this timeout.
            writer.execute(text("SET LOCAL lock_timeout = '5s'"))
            actor = Actor(org_id, "test")
            audit.record(writer, actor, "test.appended", model_id=model["id"])
    events = api.get("/v1/audit/events", params={"action": "test.appended"}).json()
    assert [e["model_id"] for e in events["items"]] == [model["id"]]
