"""The statutory clock and the auditor's request queries, filtered in the database."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from app.db import session_scope
from app.deletions.clock import add_months
from app.orm import DeletionRequest
from tests.api.test_bad_input import submit
from tests.conftest import BACKENDS

BOTH = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def backdate(request_id: str, days: int) -> None:
    """As if the request had been received ``days`` ago (request rows are not audit rows)."""
    received = datetime.now(UTC) - timedelta(days=days)
    with session_scope() as session:
        session.execute(
            update(DeletionRequest)
            .where(DeletionRequest.id == request_id)
            .values(created_at=received, due_at=add_months(received, 1))
        )


def test_months_are_calendar_months_clamped_to_the_month_end():
    jan31 = datetime(2026, 1, 31, 9, tzinfo=UTC)
    assert add_months(jan31, 1) == datetime(2026, 2, 28, 9, tzinfo=UTC)
    assert add_months(datetime(2028, 1, 31, tzinfo=UTC), 1) == datetime(2028, 2, 29, tzinfo=UTC)
    assert add_months(datetime(2026, 11, 30, tzinfo=UTC), 3) == datetime(2027, 2, 28, tzinfo=UTC)
    assert add_months(datetime(2026, 12, 15, tzinfo=UTC), 1) == datetime(2027, 1, 15, tzinfo=UTC)


@BOTH
def test_a_request_is_due_a_month_after_receipt_and_extends_twice_at_most(api, registered):
    request = submit(api, registered, key="X").json()
    received, due = when(request["received_at"]), when(request["due_at"])
    assert due == add_months(received, 1)
    assert (request["open"], request["overdue"], request["extensions"]) == (True, False, [])
    url = f"/v1/deletion-requests/{request['id']}/extensions"
    first = api.post(url, json={"months": 1, "reason": "complex request: 40 models affected"})
    assert first.status_code == 201, first.text
    assert when(first.json()["due_at"]) == add_months(received, 2)
    second = api.post(url, json={"months": 1, "reason": "retraining queue"}).json()
    assert when(second["due_at"]) == add_months(received, 3)
    assert [e["months"] for e in second["extensions"]] == [1, 1]
    refused = api.post(url, json={"months": 1, "reason": "again"})
    assert refused.status_code == 409
    assert refused.json()["code"] == "extension_refused"
    assert refused.json()["months_left"] == 0
    assert api.post(url, json={"months": 1, "reason": ""}).status_code == 422
    wanted = {"request_id": request["id"], "action": "deletion_request.extended"}
    events = api.get("/v1/audit/events", params=wanted)
    assert [e["details"]["reason"] for e in events.json()["items"]] == [
        "complex request: 40 models affected",
        "retraining queue",
    ]


@BOTH
def test_overdue_and_soon_due_requests_are_found(api, registered):
    late = submit(api, registered, key="late", caller_reference="DSR-LATE").json()
    soon = submit(api, registered, key="soon", caller_reference="DSR-SOON").json()
    later = submit(api, registered, key="later", caller_reference="DSR-LATER").json()
    withdrawn = submit(api, registered, key="gone", caller_reference="DSR-GONE").json()
    backdate(late["id"], 40)
    backdate(soon["id"], 26)  # due in 2 to 5 days, by the month's length
    backdate(withdrawn["id"], 40)
    api.post(f"/v1/jobs/{withdrawn['job']['id']}/cancel")
    found = api.get("/v1/deletion-requests/deadlines", params={"within_days": 7}).json()
    assert [(r["id"], r["overdue"]) for r in found] == [(late["id"], True), (soon["id"], False)]
    everything = api.get("/v1/deletion-requests/deadlines", params={"within_days": 60}).json()
    assert later["id"] in [r["id"] for r in everything]
    assert withdrawn["id"] not in [r["id"] for r in everything]
    overdue = api.get(
        "/v1/deletion-requests",
        params={"open": "true", "due_before": datetime.now(UTC).isoformat()},
    ).json()
    assert [r["id"] for r in overdue] == [late["id"]]
    # Past the first period, the deadline can no longer be extended.
    refused = api.post(
        f"/v1/deletion-requests/{late['id']}/extensions", json={"months": 1, "reason": "too late"}
    )
    assert refused.status_code == 409
    assert "first period" in refused.json()["detail"]


@BOTH
def test_requests_are_found_by_reference_upstream_id_status_and_time(api, registered):
    made = [
        submit(
            api,
            registered,
            key=f"k{i}",
            caller_reference=f"REF-{i % 2}",
            upstream_request_id=f"opendsr-{i}",
        ).json()
        for i in range(5)
    ]
    api.post(f"/v1/jobs/{made[0]['job']['id']}/cancel")

    def ids(**params: str) -> list[str]:
        response = api.get("/v1/deletion-requests", params=params)
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()]

    assert ids(caller_reference="REF-0") == [made[0]["id"], made[2]["id"], made[4]["id"]]
    assert ids(upstream_request_id="opendsr-3") == [made[3]["id"]]
    assert ids(status="canceled") == [made[0]["id"]]
    assert ids(status="queued", caller_reference="REF-0") == [made[2]["id"], made[4]["id"]]
    assert ids(model_id=registered["model"]["id"]) == [m["id"] for m in made]
    since = made[3]["received_at"]
    assert ids(received_since=since) == [made[3]["id"], made[4]["id"]]
    assert ids(received_until=since) == [m["id"] for m in made[:3]]
    assert api.get("/v1/deletion-requests", params={"status": "nope"}).status_code == 422
    # Pages follow the Link header, in the order received.
    seen, url = [], "/v1/deletion-requests?limit=2"
    while url:
        page = api.get(url)
        seen += [r["id"] for r in page.json()]
        url = page.links.get("next", {}).get("url")
    assert seen == [m["id"] for m in made]
    bad = api.get("/v1/deletion-requests", params={"page_token": "not-a-request"})
    assert bad.status_code == 404


@BOTH
def test_many_requests_export_as_csv(api, registered):
    made = [
        submit(api, registered, key=f"c{i}", caller_reference=f"=cmd|{i}").json() for i in range(3)
    ]
    response = api.get("/v1/deletion-requests/export.csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["request_id"] for r in rows] == [m["id"] for m in made]
    assert rows[0]["status"] == "queued" and rows[0]["open"] == "True"
    assert rows[0]["forget_spec_sha256"] == made[0]["forget_spec_sha256"]
    assert rows[0]["caller_reference"] == "'=cmd|0"  # no formula reaches a spreadsheet
    only = api.get("/v1/deletion-requests/export.csv", params={"caller_reference": "=cmd|1"})
    assert [r["request_id"] for r in csv.DictReader(io.StringIO(only.text))] == [made[1]["id"]]


@BOTH
def test_an_extension_counts_from_the_deadline_given_at_receipt(api, registered, monkeypatch):
    from tests.conftest import reset_caches

    request = submit(api, registered, key="drift").json()
    received = when(request["received_at"])
    monkeypatch.setenv("NEPENTHE_DUE_MONTHS", "3")  # the operator changes the period later
    reset_caches()
    extended = api.post(
        f"/v1/deletion-requests/{request['id']}/extensions", json={"months": 1, "reason": "complex"}
    ).json()
    assert when(extended["due_at"]) == add_months(received, 2)
    later = submit(api, registered, key="new").json()
    assert when(later["due_at"]) == add_months(when(later["received_at"]), 3)
