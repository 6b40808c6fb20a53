"""Inputs that once produced a 500 or a wrong answer; each now gets its 4xx and writes nothing."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import Image

from tests.api.conftest import BACKENDS, snapshot
from tests.api.test_bad_input import assert_problem, submit
from tests.helpers import model_body

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)
JSON = {"content-type": "application/json"}


def test_non_finite_numbers_are_refused(api, registered, store):
    before = snapshot(store)
    raw = (
        b'{"name": "n", "architecture": {"name": "tiny_cnn", "args": {"in_channels": 1}},'
        b' "input_shape": [1, 8, 8], "normalization": {"mean": [NaN], "std": [1.0]},'
        b' "class_names": ["a", "b"]}'
    )
    assert_problem(api.post("/v1/models", content=raw, headers=JSON), 422, "validation_error")
    version, dataset = registered["version"]["id"], registered["dataset"]["id"]
    ids = (version.encode(), dataset.encode())
    raw = (
        b'{"model_version_id": "%s", "dataset_id": "%s", "forget_classes": [3],'
        b' "params": {"noise_lr": Infinity}}' % ids
    )
    response = api.post("/v1/deletion-requests", content=raw, headers=JSON)
    assert_problem(response, 422, "validation_error")
    assert snapshot(store) == before


def test_nul_characters_are_refused(api, registered, store):
    before = snapshot(store)
    assert_problem(api.get("/v1/models/a%00b"), 400, "invalid_characters")
    assert_problem(api.get("/v1/audit/events?caller_reference=a%00b"), 400, "invalid_characters")
    assert_problem(submit(api, registered, caller_reference="x\u0000y"), 422, "validation_error")
    assert snapshot(store) == before


def test_out_of_range_numbers_in_paths_and_tokens(api, registered):
    model_id = registered["model"]["id"]
    assert_problem(
        api.get(f"/v1/models/{model_id}/versions/99999999999999999999999"), 422, "validation_error"
    )
    assert_problem(api.get(f"/v1/models/{model_id}/versions/0"), 422, "validation_error")
    assert_problem(
        api.get("/v1/audit/events", params={"page_token": "²"}), 422, "invalid_page_token"
    )


def test_method_parameters_are_bounded(api, registered, store):
    before = snapshot(store)
    too_much_noise = {"noise_batch": 65536, "noise_repeats": 10000}
    for params in (
        {"seed": -1},
        {"seed": 2**70},
        {"noise_batch": 10**12},
        too_much_noise,
        {"impair_lr": 1e30},
    ):
        assert_problem(submit(api, registered, params=params), 422, "invalid_method_params")
    assert snapshot(store) == before


def test_filtering_requests_by_model(api, registered):
    made = submit(api, registered, caller_reference="F-1").json()
    found = api.get("/v1/deletion-requests", params={"model_id": registered["model"]["id"]})
    assert found.status_code == 200, found.text
    assert [r["id"] for r in found.json()] == [made["id"]]
    assert api.get("/v1/deletion-requests", params={"model_id": "other"}).json() == []


def test_dataset_locations_outside_the_data_roots(api, store, tmp_path):
    before = snapshot(store)
    for location in ("/etc", "/", "~nosuchuser/x", "a" * 300 + "/b"):
        body = {"name": "x", "kind": "image_folder", "location": location}
        response = api.post("/v1/datasets", json=body)
        assert response.status_code == 422, (location, response.text)
        assert response.json()["code"] in {"dataset_location_forbidden", "dataset_unreadable"}
    stored = {"name": "x", "kind": "image_folder", "location": "store:../../etc"}
    assert_problem(api.post("/v1/datasets", json=stored), 422, "validation_error")
    assert snapshot(store) == before


def npz_upload(api, tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return api.post(
        "/v1/datasets/npz", files={"file": ("bad.npz", path.read_bytes())}, data={"name": "bad"}
    )


@pytest.mark.parametrize(
    "arrays",
    [
        {"images": np.zeros((1, 4, 4), np.uint8), "labels": np.array(0)},
        {"images": np.zeros((3, 4, 4), np.uint8), "labels": np.arange(3), "ids": np.array("a")},
        {"images": np.zeros((3, 4, 4), np.uint8), "labels": np.arange(3), "split": np.zeros(2)},
        {"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, 10**12])},
    ],
    ids=["0-d labels", "0-d ids", "short split", "huge label"],
)
def test_malformed_npz_archives(api, store, tmp_path, arrays):
    before = snapshot(store)
    assert_problem(npz_upload(api, tmp_path, **arrays), 422, "dataset_unreadable")
    assert snapshot(store) == before


def test_architecture_constructors_that_crash(api, store):
    before = snapshot(store)
    for args in ({"round_nearest": 0}, {"width_mult": 1e308}):
        body = {
            **model_body("mb"),
            "input_shape": [3, 32, 32],
            "architecture": {"name": "mobilenet_v2", "args": args},
        }
        assert_problem(api.post("/v1/models", json=body), 422, "invalid_architecture")
    assert snapshot(store) == before


def image_folder(root, classes=("0", "1", "2", "3", "4", "5", "6", "7", "8", "9"), per=6):
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per):
            Image.new("RGB", (8, 8), color=(i * 30, 0, 0)).save(root / cls / f"{i}.png")


def test_forget_samples_of_a_vanished_dataset(api, registered, store, tmp_path):
    image_folder(tmp_path / "folder")
    made = api.post(
        "/v1/datasets",
        json={"name": "folder", "kind": "image_folder", "location": str(tmp_path / "folder")},
    )
    assert made.status_code == 201, made.text
    shutil.rmtree(tmp_path / "folder")
    before = snapshot(store)
    response = submit(
        api, registered, dataset_id="folder", forget_classes=None, forget_samples=["0/0.png"]
    )
    assert_problem(response, 422, "dataset_unreadable")
    assert snapshot(store) == before


def test_audit_time_bounds_honour_offsets(api, registered):
    events = api.get("/v1/audit/events").json()["items"]
    first = datetime.fromisoformat(events[0]["at"])
    assert first.tzinfo is not None
    plus_five = timezone(timedelta(hours=5))
    since = (first - timedelta(seconds=1)).astimezone(plus_five).isoformat()
    until = (first + timedelta(seconds=1)).astimezone(plus_five).isoformat()
    found = api.get("/v1/audit/events", params={"since": since, "until": until}).json()["items"]
    assert events[0]["id"] in [e["id"] for e in found]
    later = (datetime.now(UTC) + timedelta(minutes=1)).astimezone(plus_five).isoformat()
    assert api.get("/v1/audit/events", params={"since": later}).json()["items"] == []


def test_an_id_wins_over_a_name(api, registered):
    original = registered["model"]
    impostor = api.post("/v1/models", json=model_body(original["id"]))
    assert impostor.status_code == 201
    assert api.get(f"/v1/models/{original['id']}").json()["name"] == original["name"]
    assert api.get(f"/v1/models/{impostor.json()['id']}").json()["name"] == original["id"]


def test_strict_types_and_empty_keys(api, registered, store):
    before = snapshot(store)
    assert_problem(submit(api, registered, forget_classes=[True]), 422, "validation_error")
    response = api.post(
        "/v1/deletion-requests",
        headers={"Idempotency-Key": ""},
        json={
            "model_version_id": registered["version"]["id"],
            "dataset_id": registered["dataset"]["id"],
            "forget_classes": [3],
        },
    )
    assert_problem(response, 422, "validation_error")
    assert snapshot(store) == before
