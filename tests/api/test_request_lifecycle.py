"""A request that did not succeed can be run again or closed, with a reason, and never
silently: its deadline stands, every step is audited, and what is refused changes nothing."""

from __future__ import annotations

import pytest

from tests.api.test_bad_input import submit
from tests.api.test_observability import drive
from tests.conftest import BACKENDS, new_key

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)


def ended(api, registered, status: str, **body) -> dict:
    """A request whose job the (simulated) worker ended ``status``."""
    request = submit(api, registered, **body).json()
    drive(request["job"]["id"], "running", status)
    return api.get(f"/v1/deletion-requests/{request['id']}").json()


def actions(api, request_id: str) -> list[str]:
    events = api.get("/v1/audit/events", params={"request_id": request_id}).json()["items"]
    return [e["action"] for e in events]


def test_a_closed_request_leaves_the_open_requests_and_the_deadlines(api, registered):
    request = ended(api, registered, "rejected")
    url = f"/v1/deletion-requests/{request['id']}"
    deadlines = api.get("/v1/deletion-requests/deadlines", params={"within_days": 60}).json()
    assert request["id"] in [r["id"] for r in deadlines]
    closed = api.post(f"{url}/close", json={"reason": "refused under Art. 17(3)(e)"})
    assert closed.status_code == 200, closed.text
    body = closed.json()
    assert body["open"] is False and body["close_reason"] == "refused under Art. 17(3)(e)"
    assert body["due_at"] == request["due_at"] and body["satisfied_by_request_id"] is None
    deadlines = api.get("/v1/deletion-requests/deadlines", params={"within_days": 60}).json()
    assert request["id"] not in [r["id"] for r in deadlines]
    still_open = api.get("/v1/deletion-requests", params={"open": "true"}).json()
    assert request["id"] not in [r["id"] for r in still_open]
    assert actions(api, request["id"])[-1] == "deletion_request.closed"

    for refused in (
        api.post(f"{url}/close", json={"reason": "again"}),
        api.post(f"{url}/retry", json={"reason": "after all"}),
        api.post(f"{url}/extensions", json={"months": 1, "reason": "more time"}),
    ):
        assert refused.status_code == 409, refused.text


def test_only_a_rejected_or_failed_request_is_closed_or_retried(api, registered):
    queued = submit(api, registered).json()
    url = f"/v1/deletion-requests/{queued['id']}"
    closing = api.post(f"{url}/close", json={"reason": "changed my mind"})
    assert closing.status_code == 409 and closing.json()["code"] == "request_not_closable"
    assert "cancel" in closing.json()["detail"]
    retrying = api.post(f"{url}/retry", json={"reason": "faster"})
    assert retrying.status_code == 409 and retrying.json()["code"] == "request_not_retryable"
    submitter = {"Authorization": f"Bearer {new_key('acme', 'download')}"}
    scoped = api.post(f"{url}/close", json={"reason": "x"}, headers=submitter)
    assert scoped.status_code == 403
    foreign = {"Authorization": f"Bearer {new_key('globex')}"}
    assert api.post(f"{url}/close", json={"reason": "x"}, headers=foreign).status_code == 404


def test_a_retry_changes_only_what_it_names_and_a_refused_one_changes_nothing(api, registered):
    request = ended(api, registered, "failed", method="finetune", params={"epochs": 2})
    url = f"/v1/deletion-requests/{request['id']}"
    before = actions(api, request["id"])
    bad = api.post(f"{url}/retry", json={"reason": "r", "params": {"epochs": "many"}})
    assert bad.status_code == 422
    unchanged = api.get(url).json()
    assert unchanged["params"] == request["params"] and unchanged["job"]["status"] == "failed"
    assert actions(api, request["id"]) == before

    retried = api.post(f"{url}/retry", json={"reason": "the worker ran out of memory"})
    assert retried.status_code == 202, retried.text
    body = retried.json()
    assert body["method"] == "finetune" and body["params"]["epochs"] == 2
    assert body["job"]["status"] == "queued" and body["job"]["progress"] == 0.0
    assert body["due_at"] == request["due_at"] and body["open"] is True
    assert retried.headers["Location"] == f"/v1/jobs/{body['job']['id']}"
    assert actions(api, request["id"])[-2:] == ["deletion_request.retried", "job.queued"]

    drive(body["job"]["id"], "running", "rejected")
    other = api.post(f"{url}/retry", json={"reason": "try SalUn", "method": "salun"}).json()
    assert other["method"] == "salun" and other["params"]["lr"] == 0.001  # its own defaults


def test_a_retry_is_held_to_the_job_cost_limit_like_a_submission(api, registered):
    request = ended(api, registered, "rejected")
    url = f"/v1/deletion-requests/{request['id']}"
    days = {"reason": "longer", "method": "unsir", "params": {"noise_steps": 10_000_000}}
    refused = api.post(f"{url}/retry", json=days)
    assert refused.status_code == 422 and refused.json()["code"] == "job_cost_limit_exceeded"
    assert api.get(url).json()["job"]["status"] == "rejected"
