"""A request's budget of method work: refused up front, with the estimate, when the method would
spend more; recorded with the request when it fits."""

from __future__ import annotations

import pytest

from tests.api.conftest import BACKENDS
from tests.api.test_bad_input import assert_problem, submit
from unlearning import data

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)

# digits: 1,428 training images, about 143 of class 3.
FINETUNE_ONE_EPOCH = {"method": "finetune", "params": {"epochs": 1}}


def test_a_method_estimated_over_the_budget_is_refused_before_anything_is_written(api, registered):
    # One epoch over the retain data is about 0.9 epochs of the whole training split.
    body = assert_problem(
        submit(api, registered, **FINETUNE_ONE_EPOCH, budget_epochs=0.5), 422, "budget_exceeded"
    )
    assert body["budget_epochs"] == 0.5
    assert 0.85 < body["estimated_epochs"] < 0.95
    assert body["estimated_sample_passes"] == pytest.approx(body["estimated_epochs"] * 1428)
    assert "budget_epochs" in body["detail"]
    assert api.get("/v1/deletion-requests").json() == []
    actions = [e["action"] for e in api.get("/v1/audit/events").json()["items"]]
    assert "deletion_request.created" not in actions


def test_a_request_within_its_budget_is_accepted_and_keeps_it(api, registered):
    accepted = submit(api, registered, **FINETUNE_ONE_EPOCH, budget_epochs=1.0)
    assert accepted.status_code == 202, accepted.text
    request = accepted.json()
    assert request["budget_epochs"] == 1.0
    assert api.get(f"/v1/deletion-requests/{request['id']}").json()["budget_epochs"] == 1.0
    # No budget: no limit, and none recorded.
    assert submit(api, registered, **FINETUNE_ONE_EPOCH).json()["budget_epochs"] is None


def test_the_estimate_counts_the_named_samples(api, registered):
    train_ids = list(data.open_split("sklearn_digits", None, "train").ids[:3])
    sample_request = {"forget_classes": None, "forget_samples": train_ids}
    body = assert_problem(
        submit(api, registered, **sample_request, method="salun", budget_epochs=1.0),
        422,
        "budget_exceeded",
    )
    # SalUn's 10 epochs over forget + retain, plus its saliency pass: just over 10 epochs.
    assert 10.0 < body["estimated_epochs"] < 10.01


def test_the_default_method_takes_the_request_budget_as_its_own(api, registered):
    accepted = submit(api, registered, budget_epochs=0.05)  # no method: auto for classes
    assert accepted.status_code == 202, accepted.text
    request = accepted.json()
    assert request["method"] == "auto"
    assert request["params"]["budget_epochs"] == 0.05
    # Without a budget it keeps its default of 0.1 epoch-equivalents.
    assert submit(api, registered).json()["params"]["budget_epochs"] == 0.1


def test_a_budgeted_method_asked_for_more_than_the_request_allows_is_refused(api, registered):
    body = assert_problem(
        submit(api, registered, params={"budget_epochs": 0.5}, budget_epochs=0.2),
        422,
        "budget_exceeded",
    )
    assert body["estimated_epochs"] == pytest.approx(0.5)


def test_a_budget_that_pays_for_no_image_is_refused_before_anything_is_written(api, registered):
    # 0.0001 epochs of 1,428 images is a third of an image's passes: the head refit gets none.
    body = assert_problem(
        submit(api, registered, budget_epochs=0.0001), 422, "invalid_method_params"
    )
    assert "pays for no image" in body["detail"] and "at least" in body["detail"]
    assert api.get("/v1/deletion-requests").json() == []


def test_a_reference_retrains_as_the_training_record_says_unless_told_otherwise(api):
    from tests.helpers import model_body, safetensors_bytes

    dataset = api.post("/v1/datasets", json={"name": "digits", "kind": "sklearn_digits"}).json()

    def registered_with(training: dict[str, object]) -> dict[str, object]:
        body = {**model_body(f"recorded-{training['optimizer']}"), "training": training}
        model = api.post("/v1/models", json=body).json()
        files = {"file": ("m.safetensors", safetensors_bytes(), "application/octet-stream")}
        version = api.post(f"/v1/models/{model['id']}/versions", files=files).json()
        return {"model": model, "version": version, "dataset": dataset}

    adam = registered_with({"epochs": 7, "optimizer": "adam", "lr": 0.002, "batch_size": 32})
    request = submit(api, adam, reference={"method": "retrain"}).json()
    assert request["reference"]["params"] | {"seed": 0} == {
        "epochs": 7,
        "lr": 0.002,
        "batch_size": 32,
        "weight_decay": 0.0,
        "seed": 0,
    }
    given = {"method": "retrain", "params": {"epochs": 3}}
    assert submit(api, adam, reference=given).json()["reference"]["params"]["epochs"] == 3
    # The reference retrains with Adam: an SGD record's learning rate is not taken.
    sgd = registered_with({"epochs": 4, "optimizer": "sgd", "lr": 0.1})
    params = submit(api, sgd, reference={"method": "retrain"}).json()["reference"]["params"]
    assert (params["epochs"], params["lr"], params["batch_size"]) == (4, 1e-3, 128)
