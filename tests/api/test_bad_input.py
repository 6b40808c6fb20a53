"""Every kind of bad input gets its 4xx problem document and leaves nothing behind."""

from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path

import pytest

from tests.api.conftest import BACKENDS, snapshot
from tests.helpers import model_body, safetensors_bytes, torch_bytes, trained_state

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)
PROBLEM = "application/problem+json"


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


def upload(api, model_id: str, payload: bytes, name: str = "w.safetensors"):
    files = {"file": (name, payload, "application/octet-stream")}
    return api.post(f"/v1/models/{model_id}/versions", files=files)


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unknown_model(api, store):
    before = snapshot(store)
    assert_problem(api.get("/v1/models/nope"), 404, "model_not_found")
    assert_problem(upload(api, "nope", safetensors_bytes()), 404, "model_not_found")
    assert_problem(api.get("/v1/models/nope/versions/1/checkpoint"), 404, "model_not_found")
    assert snapshot(store) == before


def test_unknown_route_and_method(api):
    assert_problem(api.get("/v1/nothing-here"), 404, "not_found")
    assert_problem(api.delete("/v1/models"), 405, "method_not_allowed")


def test_wrong_weights_for_the_architecture(api, registered, store):
    before = snapshot(store)
    state = dict(trained_state())
    state["fc.weight"] = state["fc.weight"][:5]
    body = assert_problem(upload(api, registered["model"]["id"], safetensors_bytes(state)), 422,
                          "checkpoint_mismatch")  # fmt: skip
    assert any("fc.weight" in p for p in body["problems"])
    assert snapshot(store) == before


def test_nan_weights(api, registered, store):
    before = snapshot(store)
    state = dict(trained_state())
    state["fc.bias"] = torch_nan_like(state["fc.bias"])
    assert_problem(upload(api, registered["model"]["id"], safetensors_bytes(state)), 422,
                   "checkpoint_mismatch")  # fmt: skip
    assert snapshot(store) == before


def torch_nan_like(t):
    import torch

    return torch.full_like(t, float("nan"))


def test_a_pickle_that_runs_code(api, registered, store, tmp_path):
    before = snapshot(store)
    marker = tmp_path / "pwned"
    for payload in (pickle.dumps({"fc.weight": RunsCode(marker)}, protocol=2),
                    torch_bytes({"fc.weight": RunsCode(marker)})):  # fmt: skip
        response = upload(api, registered["model"]["id"], payload, "evil.pt")
        assert_problem(response, 422, "checkpoint_unsafe")
    assert not marker.exists()
    assert snapshot(store) == before


def test_a_safetensors_file_with_a_bad_header(api, registered, store):
    before = snapshot(store)
    payload = (30).to_bytes(8, "little") + b'{"a": {"dtype": "F32", "sha'
    assert_problem(upload(api, registered["model"]["id"], payload), 422, "checkpoint_unreadable")
    assert_problem(upload(api, registered["model"]["id"], b""), 422, "empty_upload")
    assert snapshot(store) == before


def test_too_large_an_upload(api, registered, store, monkeypatch):
    from tests.conftest import reset_caches

    monkeypatch.setenv("NEPENTHE_MAX_UPLOAD_BYTES", "1000")
    reset_caches()
    before = snapshot(store)
    assert_problem(upload(api, registered["model"]["id"], safetensors_bytes()), 413,
                   "payload_too_large")  # fmt: skip
    assert snapshot(store) == before


def test_a_torch_state_dict_is_accepted_and_stored_as_safetensors(api, registered):
    response = upload(api, registered["model"]["id"], torch_bytes(trained_state()), "w.pt")
    assert response.status_code == 201, response.text
    version = response.json()
    assert version["number"] == 2
    assert version["source_format"] == "torch"
    download = api.get(version["download_url"])
    assert download.headers["x-checksum-sha256"] == version["sha256"]
    assert download.content[8:9] == b"{"  # safetensors header


def submit(api, registered, key: str | None = None, **overrides):
    body = {
        "model_version_id": registered["version"]["id"],
        "dataset_id": registered["dataset"]["id"],
        "forget_classes": [3],
        **overrides,
    }
    headers = {"Idempotency-Key": key} if key else {}
    return api.post("/v1/deletion-requests", json=body, headers=headers)


def test_unknown_class(api, registered, store):
    before = snapshot(store)
    body = assert_problem(submit(api, registered, forget_classes=["3", "giraffe"]), 422,
                          "unknown_class")  # fmt: skip
    assert "giraffe" in body["detail"]
    assert_problem(submit(api, registered, forget_classes=[10]), 422, "unknown_class")
    assert_problem(submit(api, registered, forget_classes=list(range(10))), 422,
                   "invalid_forget_set")  # fmt: skip
    assert snapshot(store) == before


def test_malformed_json(api, registered, store):
    before = snapshot(store)
    response = api.post(
        "/v1/deletion-requests", content=b'{"model_version_id": "x", ',
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert_problem(response, 400, "malformed_json")
    assert_problem(api.post("/v1/models", content=b"[1,", headers={"content-type":
                   "application/json"}), 400, "malformed_json")  # fmt: skip
    assert snapshot(store) == before


def test_schema_violations_are_422(api, registered, store):
    before = snapshot(store)
    assert_problem(submit(api, registered, forget_classes=None), 422, "validation_error")
    assert_problem(submit(api, registered, surprise=1), 422, "validation_error")
    bad_model = {**model_body("x"), "input_shape": [2, 8, 8]}
    assert_problem(api.post("/v1/models", json=bad_model), 422, "validation_error")
    assert snapshot(store) == before


def test_reused_idempotency_key_with_another_body(api, registered, store):
    key = str(uuid.uuid4())
    first = submit(api, registered, key, caller_reference="T-1")
    assert first.status_code == 202, first.text
    after_first = snapshot(store)
    replay = submit(api, registered, key, caller_reference="T-1")
    assert replay.status_code == 202
    assert replay.json()["id"] == first.json()["id"]
    assert replay.headers["Location"] == first.headers["Location"]
    assert replay.headers["Idempotent-Replayed"] == "true"
    body = assert_problem(submit(api, registered, key, caller_reference="T-2"), 422,
                          "idempotency_key_reused")  # fmt: skip
    assert "different request body" in body["detail"]
    assert snapshot(store) == after_first
    assert after_first["rows"]["deletion_request"] == 1


def test_unknown_version_dataset_method_and_params(api, registered, store):
    before = snapshot(store)
    assert_problem(submit(api, registered, model_version_id="nope"), 404,
                   "model_version_not_found")  # fmt: skip
    assert_problem(submit(api, registered, dataset_id="nope"), 404, "dataset_not_found")
    assert_problem(submit(api, registered, method="magic"), 422, "unknown_method")
    assert_problem(submit(api, registered, params={"noise_stepz": 3}), 422,
                   "invalid_method_params")  # fmt: skip
    assert_problem(submit(api, registered, params={"noise_steps": 0}), 422,
                   "invalid_method_params")  # fmt: skip
    assert_problem(submit(api, registered, params={"impair_lr": "fast"}), 422,
                   "invalid_method_params")  # fmt: skip
    assert snapshot(store) == before


def test_bad_forget_samples_and_methods_that_cannot_serve_them(api, registered, store):
    before = snapshot(store)
    unknown = submit(api, registered, forget_classes=None, forget_samples=["0", "no-such-id"])
    body = assert_problem(unknown, 422, "unknown_sample")
    assert body["unknown"] == ["no-such-id"]
    unsir = submit(api, registered, forget_classes=None, forget_samples=["0"], method="unsir")
    body = assert_problem(unsir, 422, "method_unsupported_for_forget_set")
    assert "salun" in body["supported"] and "unsir" not in body["supported"]
    assert snapshot(store) == before


def test_bad_acceptance_thresholds_and_references(api, registered, store):
    before = snapshot(store)
    for acceptance in (
        {"max_retain_drop": 1.5}, {"max_forget_accuracy": -0.1}, {"max_mia_gap": "wide"},
        {"max_retain_drop": 0.1, "strict": True},
    ):  # fmt: skip
        assert_problem(submit(api, registered, acceptance=acceptance), 422, "validation_error")
    assert_problem(submit(api, registered, reference={"method": "oracle"}), 422, "validation_error")
    assert_problem(submit(api, registered, reference={"params": {"epochz": 3}}), 422,
                   "invalid_method_params")  # fmt: skip
    assert_problem(submit(api, registered, reference={"params": {"epochs": 0}}), 422,
                   "invalid_method_params")  # fmt: skip
    assert_problem(submit(api, registered, measure_relearn_time="yes"), 422, "validation_error")
    assert snapshot(store) == before


def test_bad_models_and_datasets(api, store, tmp_path):
    before = snapshot(store)
    bad_arch = {**model_body("a"), "architecture": {"name": "resnet9000", "args": {}}}
    assert_problem(api.post("/v1/models", json=bad_arch), 422, "invalid_architecture")
    wrong_shape = {**model_body("b"), "input_shape": [3, 8, 8]}
    assert_problem(api.post("/v1/models", json=wrong_shape), 422, "invalid_architecture")
    # An image-to-image model has no classes, a built-in I2I network and a fitting transform.
    i2i = {**model_body("c"), "task": "image_to_image"}
    assert_problem(api.post("/v1/models", json=i2i), 422, "validation_error")
    i2i["class_names"] = []
    assert_problem(api.post("/v1/models", json=i2i), 422, "invalid_architecture")
    mae = {**i2i, "architecture": {"name": "mae_vit", "args": {"patch_size": 3}}}
    assert_problem(api.post("/v1/models", json=mae), 422, "invalid_architecture")
    mae["architecture"] = {"name": "mae_vit", "args": {"patch_size": 4}}
    wide = {**mae, "transform": {"kind": "outpaint", "size": 0.6}}
    assert_problem(api.post("/v1/models", json=wide), 422, "invalid_transform")
    # Transforms that would hide every pixel of an 8x8 image: nothing left to complete from.
    for everything in ({"kind": "outpaint", "size": 0.49}, {"kind": "random", "size": 0.5,
                                                           "cell": 64}):  # fmt: skip
        body = {**mae, "transform": everything}
        assert_problem(api.post("/v1/models", json=body), 422, "invalid_transform")
    for encoder in (["decoder."], ["nothing."], [""]):
        body = {**mae, "encoder": encoder}
        code = "validation_error" if encoder == [""] else "invalid_architecture"
        assert_problem(api.post("/v1/models", json=body), 422, code)
    classifier_with_encoder = {**model_body("e"), "encoder": ["encoder."]}
    assert_problem(api.post("/v1/models", json=classifier_with_encoder), 422, "validation_error")
    missing = {"name": "f", "kind": "fashion_mnist", "location": str(tmp_path / "none")}
    assert_problem(api.post("/v1/datasets", json=missing), 422, "dataset_unreadable")
    files = {"file": ("d.npz", b"not an archive", "application/octet-stream")}
    assert_problem(api.post("/v1/datasets/npz", files=files, data={"name": "n"}), 422,
                   "dataset_unreadable")  # fmt: skip
    assert snapshot(store) == before


def test_duplicate_names_are_409(api, registered, store):
    before = snapshot(store)
    assert_problem(api.post("/v1/models", json=model_body()), 409, "name_taken")
    digits = {"name": "digits", "kind": "sklearn_digits"}
    assert_problem(api.post("/v1/datasets", json=digits), 409, "name_taken")
    assert snapshot(store) == before


def test_bad_audit_page_token(api):
    assert_problem(api.get("/v1/audit/events", params={"page_token": "abc"}), 422,
                   "invalid_page_token")  # fmt: skip
    assert_problem(api.get("/v1/audit/events", params={"limit": 0}), 422, "validation_error")
