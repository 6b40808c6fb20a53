"""Drift over a model's lifetime: each version's record against its last fully trained
ancestor, the budget's announcement and its retrain; on both databases, with the worker's own
task and real digits."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import BACKENDS
from tests.api.test_bad_input import assert_problem
from tests.helpers import model_body, safetensors_bytes, trained_state
from tests.workers.test_coalescing import FEW_STEPS, ask, job_of, register, samples, time_has_come
from workers.tasks import run_job

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)

# How tests.helpers.trained_state trained the weights: what the budget's retrain repeats.
TRAINING = {"epochs": 15, "optimizer": "adam", "lr": 0.003, "batch_size": 64}


def delete_on(api, reg: dict, version_id: str, start: int) -> dict[str, Any]:
    """One sample deletion of 10 images on ``version_id``, run to its end: its job."""
    request = ask(
        api,
        {**reg, "version": {"id": version_id}},
        forget_samples=samples(start),
        params=FEW_STEPS,
        caller_reference=f"DSR-{start}",
    )
    assert run_job(request["job"]["id"]) == "succeeded"
    return job_of(api, request)


def version(api, reg: dict, version_id: str) -> dict[str, Any]:
    versions = api.get(f"/v1/models/{reg['model']['id']}/versions").json()
    items = versions["items"] if isinstance(versions, dict) else versions
    return next(v for v in items if v["id"] == version_id)


def test_each_version_records_its_drift_from_the_last_upload(api):
    reg = register(api, None)
    uploaded = reg["version"]["id"]
    assert version(api, reg, uploaded)["drift"] is None  # a base: fully trained
    current, steps, records = uploaded, [], []
    for i in range(3):
        job = delete_on(api, reg, current, 10 * i)
        current = job["output_version"]["id"]
        record = version(api, reg, current)["drift"]
        assert record == job["metrics"]["drift"]
        steps.append(
            job["metrics"]["after"]["retain_accuracy"] - job["metrics"]["before"]["retain_accuracy"]
        )
        records.append(record)
    assert [r["deletions"] for r in records] == [1, 2, 3]
    assert {r["base_version_id"] for r in records} == {uploaded}
    assert records[-1]["retain_accuracy_change"] == pytest.approx(sum(steps))
    assert all(r["weight_distance"] > 0 for r in records)
    assert records[-1]["weight_distance"] > records[0]["weight_distance"]
    assert all(r["exceeded"] == [] and r["budget"] is None for r in records)

    # A joint run of two requests counts both.
    api.patch(f"/v1/models/{reg['model']['id']}", json={"coalescing": {"max_wait_s": 3600}})
    pair = [
        ask(api, {**reg, "version": {"id": current}}, forget_samples=samples(s), params=FEW_STEPS)
        for s in (40, 50)
    ]
    time_has_come(pair[0]["job"]["id"])
    assert run_job(pair[0]["job"]["id"]) == "succeeded"
    joint = job_of(api, pair[1])
    assert joint["status"] == "succeeded", joint["error"]
    assert version(api, reg, joint["output_version"]["id"])["drift"]["deletions"] == 5


def test_a_version_past_the_budget_is_announced_and_the_next_deletion_retrains(api):
    hook = api.post("/v1/webhooks", json={"url": "https://hooks.example.com/drift"}).json()
    reg = register(api, None)
    # No retrain first: a version past the budget is still published, and announced.
    changed = api.patch(
        f"/v1/models/{reg['model']['id']}", json={"drift_budget": {"max_weight_distance": 1e-9}}
    )
    assert changed.status_code == 200, changed.text
    first = delete_on(api, reg, reg["version"]["id"], 0)
    assert first["metrics"]["drift"]["exceeded"] == ["max_weight_distance"]
    assert first["metrics"]["method"] == "salun"

    # With a training record and retrain allowed: at most one deletion per base.
    budget = {"max_deletions": 1, "retrain": True}
    refused = api.patch(f"/v1/models/{reg['model']['id']}", json={"drift_budget": budget})
    assert_problem(refused, 422, "training_record_required")
    retrainable = register_with_training(api, reg, budget)
    v1 = retrainable["version"]["id"]
    one = delete_on(api, retrainable, v1, 0)
    assert one["metrics"]["method"] == "salun" and one["metrics"]["drift"]["deletions"] == 1
    two = delete_on(api, retrainable, one["output_version"]["id"], 10)
    assert two["metrics"]["method"] == "retrain"  # the budget's retrain ran as the method
    # Judged on its fitness for use only: it is what the forget-side checks compare with.
    checked = {k for k, v in two["metrics"]["acceptance"]["thresholds"].items() if v is not None}
    assert checked == {"max_retain_drop"}
    record = two["metrics"]["drift"]
    assert record["retrained"] is True and record["retrained_because"] == ["max_deletions"]
    assert record["deletions"] == 0 and record["previous_base_version_id"] == v1
    # The retrain left out what the earlier deletion forgot too, not only its own request's.
    retained = [j["metrics"]["after"]["samples"]["retain_train"] for j in (one, two)]
    assert retained[1] == retained[0] - 10
    # The retrained version is the next one's base.
    three = delete_on(api, retrainable, two["output_version"]["id"], 20)
    assert three["metrics"]["method"] == "salun"
    assert three["metrics"]["drift"]["base_version_id"] == two["output_version"]["id"]
    assert three["metrics"]["drift"]["deletions"] == 1

    events = api.get("/v1/audit/events", params={"action": "model.drift_budget_exceeded"}).json()
    announced = [e["details"]["job_id"] for e in events["items"]]
    assert announced == [first["id"], two["id"]]
    # An auditor who looks a request up by its reference finds the announcement too.
    assert [e["caller_reference"] for e in events["items"]] == ["DSR-0", "DSR-10"]
    deliveries = api.get(f"/v1/webhooks/{hook['id']}/deliveries").json()
    items = deliveries["items"] if isinstance(deliveries, dict) else deliveries
    assert sum(d["event_type"] == "model.drift_budget_exceeded" for d in items) == 2


def register_with_training(api, reg: dict, budget: dict[str, Any]) -> dict[str, Any]:
    """A model registered with its training record and ``budget``, its weights uploaded."""
    body = {**model_body("with-record"), "training": TRAINING, "drift_budget": budget}
    model = api.post("/v1/models", json=body)
    assert model.status_code == 201, model.text
    # Other weights than the first model's: those were superseded by its deletion.
    state = {k: v + 1e-4 if v.is_floating_point() else v for k, v in trained_state().items()}
    files = {"file": ("m.safetensors", safetensors_bytes(state), "application/octet-stream")}
    uploaded = api.post(f"/v1/models/{model.json()['id']}/versions", files=files).json()
    return {"model": model.json(), "version": uploaded, "dataset": reg["dataset"]}
