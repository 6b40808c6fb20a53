"""The audit log is append-only and tamper-evident: the database refuses UPDATE and DELETE from
the service's connection, and a change made past that (by someone able to switch the guard off)
breaks the hash chain at the row that was touched."""

from __future__ import annotations

import itertools
import json
import sqlite3
from datetime import datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from app.db import get_engine
from app.signing import load_public_key, verify
from tests.api.test_bad_input import submit
from tests.conftest import BACKENDS, PG_ADMIN

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)


def tamper(service_env: dict[str, str], *statements: str) -> None:
    """Run SQL as someone who can switch the append-only guard off (a DBA with the server)."""
    url = service_env["NEPENTHE_DATABASE_URL"]
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.split("///", 1)[1])
        conn.execute("DROP TRIGGER IF EXISTS audit_event_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_event_no_delete")
        for statement in statements:
            conn.execute(statement)
        conn.commit()
        conn.close()
        return
    dbname = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN.rsplit("/", 1)[0] + "/" + dbname, autocommit=True) as conn:
        # Superusers only: triggers stop firing in this session (as during a replica restore).
        conn.execute("SET session_replication_role = replica")
        for statement in statements:
            conn.execute(statement)


def verification(api, **params: Any) -> dict[str, Any]:
    response = api.get("/v1/audit/verify", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def some_history(api, registered) -> int:
    """A few requests and a cancel: events from several routes. Returns the chain length."""
    for key in ("A", "B"):
        job = submit(api, registered, key=key).json()["job"]
    api.post(f"/v1/jobs/{job['id']}/cancel")
    report = verification(api)
    assert report["ok"] is True and report["broken"] is None
    return int(report["events_checked"])


def test_the_chain_links_every_event_and_verifies(api, registered):
    length = some_history(api, registered)
    events = api.get("/v1/audit/events", params={"limit": 1000}).json()["items"]
    assert [e["seq"] for e in events] == list(range(1, length + 1))
    assert events[0]["prev_hash"] == "0" * 64
    for before, after in itertools.pairwise(events):
        assert after["prev_hash"] == before["hash"]
    created = [e for e in events if e["action"] == "deletion_request.created"]
    assert created[0]["actor"].startswith("key:")
    assert created[0]["http_request_id"] and created[0]["client_address"]
    report = verification(api)
    assert (report["head_seq"], report["head_hash"]) == (length, events[-1]["hash"])


@pytest.mark.parametrize(
    ("change", "seq", "code"),
    [
        (
            "UPDATE audit_event SET details = '{\"forget_classes\": [4]}' WHERE seq = 4",
            4,
            "content_altered",
        ),
        ("UPDATE audit_event SET at = at - interval '1 hour' WHERE seq = 4", 4, "content_altered"),
        ("DELETE FROM audit_event WHERE seq = 4", 4, "sequence_gap"),
        (
            "UPDATE audit_event SET seq = -seq WHERE seq IN (4, 5);"
            "UPDATE audit_event SET seq = 9 - (-seq) WHERE seq IN (-4, -5)",
            4,
            "link_broken",
        ),
    ],
    ids=["edit-details", "edit-time", "delete", "reorder"],
)
def test_editing_deleting_or_reordering_a_row_names_the_broken_link(
    api, registered, service_env, change, seq, code
):
    some_history(api, registered)
    if service_env["NEPENTHE_DATABASE_URL"].startswith("sqlite"):
        change = change.replace("at - interval '1 hour'", "datetime(at, '-1 hour')")
    tamper(service_env, *change.split(";"))
    report = verification(api)
    assert report["ok"] is False
    assert report["broken"]["seq"] == seq
    assert report["broken"]["code"] == code


def test_a_truncated_log_is_caught_by_the_head_and_by_an_exported_anchor(
    api, registered, service_env
):
    length = some_history(api, registered)
    head = api.get("/v1/audit/head").json()
    key = api.get("/v1/signing-key").json()
    payload = verify(head, load_public_key(key["public_key_pem"].encode()))
    assert (payload["seq"], payload["type"]) == (length, "nepenthe.audit_head")
    anchor = {"anchor_seq": payload["seq"], "anchor_hash": payload["hash"]}
    submit(api, registered, key="C")
    assert verification(api, **anchor)["ok"] is True  # the log grew past the anchor
    # Cut the newest events and roll the head back too: only the exported anchor notices.
    tamper(
        service_env,
        f"DELETE FROM audit_event WHERE seq > {length - 2}",
        f"UPDATE audit_chain_head SET seq = {length - 2}, hash = (SELECT hash FROM "
        f"audit_event WHERE seq = {length - 2})",
    )
    assert verification(api)["ok"] is True
    report = verification(api, **anchor)
    assert report["ok"] is False
    assert (report["broken"]["code"], report["broken"]["seq"]) == ("truncated", length)
    # Cut the end without touching the head: the head row itself tells.
    tamper(service_env, f"DELETE FROM audit_event WHERE seq = {length - 2}")
    report = verification(api)
    assert (report["broken"]["code"], report["broken"]["seq"]) == ("truncated", length - 2)


COLUMNS = (
    "org_id, at, action, actor, model_id, model_version_id, dataset_id, request_id, job_id, "
    "caller_reference, client_address, http_request_id, details, prev_hash, hash"
)


def test_a_deleted_middle_event_with_the_head_rolled_back_is_caught(api, registered, service_env):
    """Delete event 3, set the head back to event 2: the events after it are past the head,
    and the anchor exported earlier was never reached by the walk."""
    length = some_history(api, registered)
    payload = api.get("/v1/audit/head").json()["payload"]
    anchor = {"anchor_seq": payload["seq"], "anchor_hash": payload["hash"]}
    tamper(
        service_env,
        "DELETE FROM audit_event WHERE seq = 3",
        "UPDATE audit_chain_head SET seq = 2, hash = (SELECT hash FROM audit_event WHERE seq = 2)",
    )
    report = verification(api)
    assert report["ok"] is False
    assert (report["broken"]["code"], report["broken"]["seq"]) == ("beyond_head", 4)
    anchored = verification(api, **anchor)
    assert anchored["ok"] is False and anchored["events_checked"] == 2
    # What verification does not cover, the log does not serve.
    served = [e["seq"] for e in api.get("/v1/audit/events").json()["items"]]
    assert served == [1, 2] and length > 4


def test_a_row_inserted_past_the_head_is_reported_and_never_served(api, registered, service_env):
    length = some_history(api, registered)
    tamper(
        service_env,
        f"INSERT INTO audit_event (seq, {COLUMNS}) SELECT 99, {COLUMNS} FROM audit_event "
        f"WHERE seq = {length}",
    )
    report = verification(api)
    assert report["ok"] is False
    assert (report["broken"]["code"], report["broken"]["seq"]) == ("beyond_head", 99)
    served = [e["seq"] for e in api.get("/v1/audit/events").json()["items"]]
    assert served == list(range(1, length + 1))


def test_the_service_connection_cannot_update_or_delete_audit_rows(api, registered):
    some_history(api, registered)
    for statement in (
        "UPDATE audit_event SET action = 'x' WHERE seq = 1",
        "DELETE FROM audit_event WHERE seq = 1",
    ):
        with pytest.raises(DatabaseError, match="append-only"), get_engine().begin() as conn:
            conn.execute(text(statement))
    if get_engine().dialect.name == "postgresql":
        with pytest.raises(DatabaseError, match="append-only"), get_engine().begin() as conn:
            conn.execute(text("TRUNCATE audit_event CASCADE"))
    assert verification(api)["ok"] is True


def test_the_operator_command_walks_the_chain(api, registered, service_env, capsys):
    from app.cli import main

    some_history(api, registered)
    assert main(["verify-audit", "--org", "acme"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    tamper(service_env, "UPDATE audit_event SET actor = 'key:someone-else' WHERE seq = 3")
    assert main(["verify-audit", "--org", "acme"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["broken"]["seq"], report["broken"]["code"]) == (3, "content_altered")


def test_time_only_grows_along_the_chain_and_bounds_select_a_window(api, registered):
    some_history(api, registered)
    events = api.get("/v1/audit/events", params={"limit": 1000}).json()["items"]
    times = [datetime.fromisoformat(e["at"]) for e in events]
    assert times == sorted(times)
    middle = events[len(events) // 2]

    def seqs(**params: str) -> list[int]:
        response = api.get("/v1/audit/events", params={"limit": 1000, **params})
        assert response.status_code == 200, response.text
        return [e["seq"] for e in response.json()["items"]]

    at = datetime.fromisoformat(middle["at"])
    timed = list(zip(events, times, strict=True))
    assert seqs(since=middle["at"]) == [e["seq"] for e, t in timed if t >= at]
    assert seqs(until=middle["at"]) == [e["seq"] for e, t in timed if t < at]
    window = [e["seq"] for e, t in timed if times[1] <= t < at]
    assert seqs(since=events[1]["at"], until=middle["at"]) == window
    assert seqs(since="2999-01-01T00:00:00Z") == []
    assert seqs(until="2000-01-01T00:00:00Z") == []
