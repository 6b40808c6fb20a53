"""Coalescing: requests waiting on one version run as one joint job, under their deadlines, with
a receipt, certificate and audit trail each; on both databases, with the worker's own functions
and real digits."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from typing import Any

import pytest
from sqlalchemy import update

from app.db import session_scope
from app.jobs import coalescing
from app.jobs.outcome import earlier_forgets
from app.orm import DeletionRequest, Job, JobStatus, Model, ModelVersion, utcnow
from tests.api.conftest import BACKENDS
from tests.api.test_bad_input import assert_problem
from tests.conftest import reset_caches
from tests.helpers import model_body, safetensors_bytes
from unlearning import data
from workers.progress import ProgressReporter
from workers.sweeper import sweep_once
from workers.tasks import _run_claimed, claim, claim_next, run_job

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)

HOUR = 3600.0
# Sample requests run SalUn's default for a few steps: enough to forget 10 digits.
FEW_STEPS = {"epochs": 2}


def register(api, coalesce: dict[str, Any] | None, name: str = "coalescing-cnn") -> dict:
    body = {**model_body(name), "coalescing": coalesce}
    model = api.post("/v1/models", json=body)
    assert model.status_code == 201, model.text
    files = {"file": ("m.safetensors", safetensors_bytes(), "application/octet-stream")}
    version = api.post(f"/v1/models/{model.json()['id']}/versions", files=files).json()
    dataset = api.post("/v1/datasets", json={"name": "digits", "kind": "sklearn_digits"})
    if dataset.status_code == 409:
        dataset = api.get("/v1/datasets/digits")
    return {"model": model.json(), "version": version, "dataset": dataset.json()}


def ask(api, reg, **forget: Any) -> dict:
    body = {
        "model_version_id": reg["version"]["id"],
        "dataset_id": reg["dataset"]["id"],
        **forget,
    }
    response = api.post("/v1/deletion-requests", json=body)
    assert response.status_code == 202, response.text
    return dict(response.json())


@lru_cache
def train_ids() -> list[str]:
    return list(data.open_split("sklearn_digits", None, "train").ids)


def samples(start: int, count: int = 10) -> list[str]:
    """``count`` ids of the digits training split, from its ``start``-th."""
    return train_ids()[start : start + count]


def job_of(api, request: dict) -> dict:
    return dict(api.get(f"/v1/jobs/{request['job']['id']}").json())


def time_has_come(job_id: str) -> None:
    """The job's wait is over (as if its max_wait_s had passed)."""
    with session_scope() as session:
        past = utcnow() - timedelta(seconds=60)
        session.execute(
            update(Job).where(Job.id == job_id).values(not_before=past, updated_at=past)
        )


def configure(monkeypatch, **settings: object) -> None:
    for name, value in settings.items():
        monkeypatch.setenv(f"NEPENTHE_{name.upper()}", str(value))
    reset_caches()


def test_waiting_requests_run_as_one_job_and_each_gets_its_own_certificate(api, monkeypatch):
    configure(monkeypatch, send_grace_s=0)
    reg = register(api, {"max_wait_s": HOUR})
    first = ask(api, reg, forget_samples=samples(0), params=FEW_STEPS)
    second = ask(api, reg, forget_samples=samples(10), params=FEW_STEPS)
    # Overlapping the second: the union names each sample once.
    third = ask(api, reg, forget_samples=samples(15), params=FEW_STEPS)
    waiting = job_of(api, first)
    assert waiting["status"] == "queued" and waiting["phase"] == coalescing.WAITING
    assert waiting["not_before"] is not None

    # Within their wait nothing runs them: no message was sent, and a delivery of another
    # job's message does not take one that waits.
    assert sweep_once()["sent"] == 0
    assert claim_next(first["job"]["id"]) is None

    time_has_come(first["job"]["id"])
    assert sweep_once()["sent"] == 1  # the first whose time came, and only it
    assert run_job(first["job"]["id"]) == "succeeded"  # the worker's task, in this process

    jobs = [job_of(api, r) for r in (first, second, third)]
    assert [j["status"] for j in jobs] == ["succeeded"] * 3, [j["error"] for j in jobs]
    leader = jobs[0]["id"]
    assert [j["joint_job_id"] for j in jobs] == [None, leader, leader]
    outputs = {j["output_version"]["id"] for j in jobs}
    assert len(outputs) == 1  # one run, one new version
    versions = api.get(f"/v1/models/{reg['model']['id']}/versions").json()
    assert len(versions["items"] if isinstance(versions, dict) else versions) == 2
    joint = jobs[0]["metrics"]["joint"]
    assert joint["requests"] == 3 and joint["forget_samples_count"] == 25
    assert all(j["metrics"]["joint"] == joint for j in jobs)
    # The run measured (and the gate judged) the union.
    assert jobs[0]["metrics"]["after"]["samples"]["forget_train"] == 25

    certificates = [
        api.get(f"/v1/deletion-requests/{r['id']}/certificate").json()
        for r in (first, second, third)
    ]
    receipts = [
        api.get(f"/v1/deletion-requests/{r['id']}/receipt").json() for r in (first, second, third)
    ]
    for request, job, certificate, receipt in zip(
        (first, second, third), jobs, certificates, receipts, strict=True
    ):
        payload = certificate["payload"]
        assert payload["request_id"] == request["id"] and payload["job_id"] == job["id"]
        assert payload["joint_job_id"] == leader
        assert payload["joint_request_ids"] == [first["id"], second["id"], third["id"]]
        assert payload["output_version_id"] in outputs
        assert payload["receipt_signature"] == receipt["signature"]["value"]
        assert payload["forget_spec_sha256"] == request["forget_spec_sha256"]
    assert len({c["signature"]["value"] for c in certificates}) == 3

    # Each request's own audit trail shows it joining the run and the result.
    for request in (second, third):
        events = api.get("/v1/audit/events", params={"request_id": request["id"]}).json()
        reasons = {e["action"]: e["details"].get("reason") for e in events["items"]}
        joined = f"joined job {leader}: one run forgets the data of its requests together"
        assert reasons["job.running"] == joined
        assert reasons["job.succeeded"] == f"unlearning finished in joint job {leader}"

    # A later request on the joint version knows every member's data is already forgotten.
    with session_scope() as session:
        output = session.get(ModelVersion, outputs.pop())
        assert output is not None
        _, forgotten = earlier_forgets(session, output, reg["dataset"]["id"])
    assert forgotten == sorted(samples(0) + samples(10) + samples(20, 5))


def test_only_requests_that_can_share_a_run_join_it_and_they_end_with_it(api, monkeypatch):
    configure(monkeypatch, send_grace_s=0)
    reg = register(api, {"max_wait_s": HOUR, "max_requests": 3})
    leader = ask(api, reg, forget_samples=samples(0), params=FEW_STEPS)
    same = [ask(api, reg, forget_samples=samples(10 * i), params=FEW_STEPS) for i in (1, 2, 3)]
    classes = ask(api, reg, forget_classes=[3])
    other_params = ask(api, reg, forget_samples=samples(50), params={"epochs": 3})
    budgeted = ask(api, reg, forget_samples=samples(60), params=FEW_STEPS, budget_epochs=50)
    alone = register(api, None, name="plain-cnn")
    elsewhere = ask(api, alone, forget_samples=samples(0), params=FEW_STEPS)
    assert job_of(api, budgeted)["not_before"] is None  # a budget of its own: no waiting
    assert job_of(api, elsewhere)["not_before"] is None  # the model did not opt in

    lease = claim(leader["job"]["id"])
    assert lease is not None
    states = {r["id"]: job_of(api, r) for r in [leader, *same, classes, other_params, budgeted]}
    joined = [r for r in same if states[r["id"]]["status"] == "running"]
    assert [r["id"] for r in joined] == [r["id"] for r in same[:2]]  # max_requests: 3 in all
    assert all(states[r["id"]]["joint_job_id"] == leader["job"]["id"] for r in joined)
    for r in (same[2], classes, other_params, budgeted):
        assert states[r["id"]]["status"] == "queued"
    assert job_of(api, elsewhere)["status"] == "queued"

    # Progress and heartbeats of the run reach its members too.
    report = ProgressReporter(leader["job"]["id"], interval_s=0)
    report("unlearn", 0.5)
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == leader["job"]["id"]).values(lease_id=lease))
    from workers.tasks import finish

    assert finish(leader["job"]["id"], JobStatus.failed, "ended by the test", "boom", lease)
    for r in joined:
        job = job_of(api, r)
        assert job["status"] == "failed" and job["error"] == "boom"
        assert job["joint_job_id"] == leader["job"]["id"]
    # Retried, a member runs alone: the joint run it was part of is over.
    retried = api.post(
        f"/v1/deletion-requests/{joined[0]['id']}/retry", json={"reason": "run it alone"}
    )
    assert retried.status_code == 202, retried.text
    assert retried.json()["job"]["status"] == "queued"
    assert retried.json()["job"]["joint_job_id"] is None


def test_canceling_a_member_leaves_the_run_and_canceling_the_run_returns_its_members(
    api, monkeypatch
):
    configure(monkeypatch, send_grace_s=0)
    reg = register(api, {"max_wait_s": HOUR})
    leader, member, leaving = (
        ask(api, reg, forget_samples=samples(10 * i), params=FEW_STEPS) for i in range(3)
    )
    lease = claim(leader["job"]["id"])
    assert lease is not None
    canceled = api.post(f"/v1/jobs/{leaving['job']['id']}/cancel")
    assert canceled.status_code == 202 and canceled.json()["status"] == "canceled"

    assert _run_claimed(leader["job"]["id"], lease, ProgressReporter(leader["job"]["id"], 0.1))
    assert job_of(api, leader)["status"] == "succeeded"
    assert job_of(api, member)["status"] == "succeeded"
    assert job_of(api, leaving)["status"] == "canceled"
    certificate = api.get(f"/v1/deletion-requests/{leaving['id']}/certificate")
    assert_problem(certificate, 404, "certificate_not_issued")
    # Canceled before the run read its work: the union left its data out.
    joint = job_of(api, member)["metrics"]["joint"]
    assert joint["request_ids"] == [leader["id"], member["id"]]

    # Now a run canceled by its client: its members go back to the queue, not canceled.
    out = job_of(api, leader)["output_version"]["id"]
    reg["version"] = {"id": out}
    second_leader = ask(api, reg, forget_samples=samples(40), params=FEW_STEPS)
    second_member = ask(api, reg, forget_samples=samples(50), params=FEW_STEPS)
    lease = claim(second_leader["job"]["id"])
    assert lease is not None
    assert api.post(f"/v1/jobs/{second_leader['job']['id']}/cancel").status_code == 202
    reporter = ProgressReporter(second_leader["job"]["id"], 0.1)
    assert _run_claimed(second_leader["job"]["id"], lease, reporter) == "canceled"
    back = job_of(api, second_member)
    assert back["status"] == "queued" and back["joint_job_id"] is None and back["attempts"] == 0


def test_a_request_never_waits_past_its_due_date_less_the_margin(api, monkeypatch):
    reg = register(api, {"max_wait_s": 10 * 86400})
    with session_scope() as session:
        model = session.get(Model, reg["model"]["id"])
        assert model is not None
        session.expunge(model)
    now = utcnow()
    request = DeletionRequest(created_at=now, due_at=now + timedelta(days=30))
    # Far from its deadline: the model's wait.
    configure(monkeypatch, coalescing_deadline_margin_s=7 * 86400)
    assert coalescing.wait_until(model, request) == now + timedelta(days=10)
    # Close to it: the due date less the margin bounds the wait.
    configure(monkeypatch, coalescing_deadline_margin_s=25 * 86400)
    assert coalescing.wait_until(model, request) == now + timedelta(days=5)
    # No time left to wait: it runs at once.
    configure(monkeypatch, coalescing_deadline_margin_s=31 * 86400)
    assert coalescing.wait_until(model, request) is None

    # Through the API: a deadline closer than the margin sends the job at once.
    submitted = ask(api, reg, forget_samples=samples(0), params=FEW_STEPS)
    job = job_of(api, submitted)
    assert job["not_before"] is None and job["phase"] is None
    configure(monkeypatch, coalescing_deadline_margin_s=7 * 86400)
    waits = job_of(api, ask(api, reg, forget_samples=samples(10), params=FEW_STEPS))
    assert waits["phase"] == coalescing.WAITING


def test_coalescing_is_changed_on_a_registered_model_and_audited(api):
    reg = register(api, None)
    model_id = reg["model"]["id"]
    assert reg["model"]["coalescing"] is None
    changed = api.patch(f"/v1/models/{model_id}", json={"coalescing": {"max_wait_s": 600}})
    assert changed.status_code == 200, changed.text
    assert changed.json()["coalescing"] == {"max_wait_s": 600.0, "max_requests": 100}
    request = ask(api, reg, forget_samples=samples(0))
    assert job_of(api, request)["phase"] == coalescing.WAITING
    off = api.patch(f"/v1/models/{reg['model']['name']}", json={"coalescing": None})
    assert off.status_code == 200 and off.json()["coalescing"] is None
    assert job_of(api, ask(api, reg, forget_samples=samples(10)))["not_before"] is None

    for bad in ({"coalescing": {"max_wait_s": 0}}, {"coalescing": {"max_wait_s": 5, "x": 1}}, {}):
        assert_problem(api.patch(f"/v1/models/{model_id}", json=bad), 422, "validation_error")
    assert_problem(
        api.patch("/v1/models/no-such-model", json={"coalescing": None}), 404, "model_not_found"
    )
    events = api.get("/v1/audit/events", params={"action": "model.updated"}).json()["items"]
    assert [e["details"]["coalescing"]["after"] for e in events] == [
        {"max_wait_s": 600.0, "max_requests": 100},
        None,
    ]


def test_a_rejected_joint_run_rejects_every_request_with_the_figures_of_the_union(api):
    reg = register(api, {"max_wait_s": HOUR})
    # A threshold no SalUn run on digits meets.
    strict = {"params": FEW_STEPS, "acceptance": {"max_forget_accuracy": 0.0}}
    requests = [ask(api, reg, forget_samples=samples(10 * i), **strict) for i in range(3)]
    leader = requests[0]["job"]["id"]
    time_has_come(leader)
    assert run_job(leader) == "rejected"
    jobs = [job_of(api, r) for r in requests]
    assert [j["status"] for j in jobs] == ["rejected"] * 3
    assert all(j["metrics"]["after"]["samples"]["forget_train"] == 30 for j in jobs)
    assert all(j["output_version"] is None for j in jobs)
    events = api.get(f"/v1/jobs/{requests[1]['job']['id']}/events").json()
    assert events[-1]["reason"].startswith(f"its joint job {leader}: the result missed")
