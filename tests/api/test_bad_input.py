"""Every kind of bad input gets its 4xx problem document and leaves nothing behind."""

from __future__ import annotations

import io
import os
import pickle
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
    body = assert_problem(
        upload(api, registered["model"]["id"], safetensors_bytes(state)), 422, "checkpoint_mismatch"
    )
    assert any("fc.weight" in p for p in body["problems"])
    assert snapshot(store) == before


def test_nan_weights(api, registered, store):
    before = snapshot(store)
    state = dict(trained_state())
    state["fc.bias"] = torch_nan_like(state["fc.bias"])
    assert_problem(
        upload(api, registered["model"]["id"], safetensors_bytes(state)), 422, "checkpoint_mismatch"
    )
    assert snapshot(store) == before


def torch_nan_like(t):
    import torch

    return torch.full_like(t, float("nan"))


def test_a_pickle_that_runs_code(api, registered, store, tmp_path):
    before = snapshot(store)
    marker = tmp_path / "pwned"
    for payload in (
        pickle.dumps({"fc.weight": RunsCode(marker)}, protocol=2),
        torch_bytes({"fc.weight": RunsCode(marker)}),
    ):
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
    assert_problem(
        upload(api, registered["model"]["id"], safetensors_bytes()), 413, "payload_too_large"
    )
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
    body = assert_problem(
        submit(api, registered, forget_classes=["3", "giraffe"]), 422, "unknown_class"
    )
    assert "giraffe" in body["detail"]
    assert_problem(submit(api, registered, forget_classes=[10]), 422, "unknown_class")
    assert_problem(
        submit(api, registered, forget_classes=list(range(10))), 422, "invalid_forget_set"
    )
    assert snapshot(store) == before


def test_malformed_json(api, registered, store):
    before = snapshot(store)
    response = api.post(
        "/v1/deletion-requests",
        content=b'{"model_version_id": "x", ',
        headers={"content-type": "application/json"},
    )
    assert_problem(response, 400, "malformed_json")
    assert_problem(
        api.post("/v1/models", content=b"[1,", headers={"content-type": "application/json"}),
        400,
        "malformed_json",
    )
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
    body = assert_problem(
        submit(api, registered, key, caller_reference="T-2"), 422, "idempotency_key_reused"
    )
    assert "different request body" in body["detail"]
    assert snapshot(store) == after_first
    assert after_first["rows"]["deletion_request"] == 1


def test_unknown_version_dataset_method_and_params(api, registered, store):
    before = snapshot(store)
    assert_problem(submit(api, registered, model_version_id="nope"), 404, "model_version_not_found")
    assert_problem(submit(api, registered, dataset_id="nope"), 404, "dataset_not_found")
    assert_problem(submit(api, registered, method="magic"), 422, "unknown_method")
    assert_problem(submit(api, registered, params={"noise_stepz": 3}), 422, "invalid_method_params")
    assert_problem(submit(api, registered, params={"noise_steps": 0}), 422, "invalid_method_params")
    assert_problem(
        submit(api, registered, params={"impair_lr": "fast"}), 422, "invalid_method_params"
    )
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
        {"max_retain_drop": 1.5},
        {"max_forget_accuracy": -0.1},
        {"max_mia_gap": "wide"},
        {"max_retain_drop": 0.1, "strict": True},
    ):
        assert_problem(submit(api, registered, acceptance=acceptance), 422, "validation_error")
    assert_problem(submit(api, registered, reference={"method": "oracle"}), 422, "validation_error")
    assert_problem(
        submit(api, registered, reference={"params": {"epochz": 3}}), 422, "invalid_method_params"
    )
    assert_problem(
        submit(api, registered, reference={"params": {"epochs": 0}}), 422, "invalid_method_params"
    )
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
    for everything in (
        {"kind": "outpaint", "size": 0.49},
        {"kind": "random", "size": 0.5, "cell": 64},
    ):
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
    assert_problem(
        api.post("/v1/datasets/npz", files=files, data={"name": "n"}), 422, "dataset_unreadable"
    )
    assert snapshot(store) == before


def test_duplicate_names_are_409(api, registered, store):
    before = snapshot(store)
    assert_problem(api.post("/v1/models", json=model_body()), 409, "name_taken")
    digits = {"name": "digits", "kind": "sklearn_digits"}
    assert_problem(api.post("/v1/datasets", json=digits), 409, "name_taken")
    assert snapshot(store) == before


def test_bad_audit_page_token(api):
    assert_problem(
        api.get("/v1/audit/events", params={"page_token": "abc"}), 422, "invalid_page_token"
    )
    assert_problem(api.get("/v1/audit/events", params={"limit": 0}), 422, "validation_error")


# Uploads of the wrong content, hostile archives and empty files: each a 4xx with a stable code,
# and nothing written to the store or the database.


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buf.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def npz_members(images: np.ndarray | None = None) -> dict[str, bytes]:
    """The members of a small valid .npz dataset: 10 grey 8x8 images of two classes."""
    images = np.zeros((10, 8, 8), np.uint8) if images is None else images
    return {"images.npy": npy_bytes(images), "labels.npy": npy_bytes(np.arange(10) % 2)}


def upload_npz(api, payload: bytes):
    files = {"file": ("d.npz", payload, "application/octet-stream")}
    return api.post("/v1/datasets/npz", files=files, data={"name": "uploaded"})


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    return buf.getvalue()


def torch_archive(rename=lambda name: name, extra: str | None = None) -> bytes:
    """A real torch .pt zip archive of the trained state, its members renamed, plus ``extra``."""
    original = zipfile.ZipFile(io.BytesIO(torch_bytes(trained_state())))
    members = {rename(info.filename): original.read(info) for info in original.infolist()}
    if extra is not None:
        members[extra] = b"payload"
    return zip_bytes(members)


def test_wrong_content_as_a_checkpoint(api, registered, store):
    before = snapshot(store)
    model_id = registered["model"]["id"]
    for payload, name in (
        (png_bytes(), "w.safetensors"),
        (png_bytes(), "w.pt"),
        (b"just some text\n", "w.safetensors"),
        (zip_bytes({"notes.txt": b"hello"}), "w.pt"),
    ):
        assert_problem(upload(api, model_id, payload, name), 422, "checkpoint_unreadable")
    assert_problem(upload(api, model_id, b"", "w.pt"), 422, "empty_upload")
    assert snapshot(store) == before


def test_wrong_content_as_an_npz_dataset(api, store):
    before = snapshot(store)
    # A zip whose members are not .npy arrays: np.load hands those back as bytes (was a 500).
    not_arrays = zip_bytes({"images": b"hello", "labels": b"world"})
    for payload in (png_bytes(), b"images,labels\n1,2\n", not_arrays):
        assert_problem(upload_npz(api, payload), 422, "dataset_unreadable")
    flat = np.zeros((10, 0, 8), np.uint8)  # images without pixels
    assert_problem(upload_npz(api, zip_bytes(npz_members(flat))), 422, "dataset_unreadable")
    assert_problem(upload_npz(api, b""), 422, "empty_upload")
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("rename", "extra"),
    [
        (lambda name: "../" + name, None),
        (lambda name: "/" + name, None),
        (lambda name: name, "archive/../../evil.sh"),
        (lambda name: name, "/etc/cron.d/evil"),
    ],
    ids=["parent-prefix", "absolute", "inner-parent", "absolute-extra"],
)
def test_torch_archive_whose_members_escape(api, registered, store, rename, extra):
    before = snapshot(store)
    response = upload(api, registered["model"]["id"], torch_archive(rename, extra), "w.pt")
    body = assert_problem(response, 422, "archive_path_escapes")
    assert "leave its folder" in body["detail"]
    assert snapshot(store) == before


@pytest.mark.parametrize(
    "member", ["../images.npy", "/tmp/evil.npy", "a/../../evil.npy", "..\\evil.npy", "C:/evil.npy"]
)
def test_npz_dataset_whose_members_escape(api, store, member):
    before = snapshot(store)
    members = {**npz_members(), member: npy_bytes(np.arange(3))}
    body = assert_problem(upload_npz(api, zip_bytes(members)), 422, "archive_path_escapes")
    assert member in body["detail"] or repr(member) in body["detail"]
    assert snapshot(store) == before


def test_npz_declaring_far_more_than_it_holds(api, store):
    before = snapshot(store)
    # The zip directory says 1 TiB: refused before anything is inflated.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, content in npz_members().items():
            archive.writestr(name, content)
        archive.infolist()[0].file_size = 2**40
    assert_problem(upload_npz(api, buf.getvalue()), 422, "dataset_too_large")
    # An .npy header declaring 10^12 images of 8x8 over a few bytes of data.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (10**12, 8, 8)}
    )
    lying = {**npz_members(), "images.npy": header.getvalue() + bytes(64)}
    assert_problem(upload_npz(api, zip_bytes(lying)), 422, "dataset_too_large")
    assert snapshot(store) == before


def test_npz_that_inflates_past_the_limit(api, store, monkeypatch):
    import unlearning.data

    before = snapshot(store)
    monkeypatch.setattr(unlearning.data, "MAX_NPZ_BYTES", 1_000_000)
    # 10 MB of zeros deflates to about 10 kB: a ratio of 1000, truthfully declared.
    bomb = zip_bytes(npz_members(np.zeros((10, 1000, 1000), np.uint8)), zipfile.ZIP_DEFLATED)
    assert len(bomb) < 100_000
    body = assert_problem(upload_npz(api, bomb), 422, "dataset_too_large")
    assert "1000000" in body["detail"]
    assert snapshot(store) == before


def test_tensors_of_the_wrong_dtype(api, registered, store):
    import torch

    before = snapshot(store)
    model_id = registered["model"]["id"]
    ints = {
        k: v.to(torch.int32) if v.is_floating_point() else v for k, v in trained_state().items()
    }
    body = assert_problem(
        upload(api, model_id, safetensors_bytes(ints)), 422, "checkpoint_mismatch"
    )
    assert any("dtype torch.int32" in p for p in body["problems"])
    floats = {k: v.float() for k, v in trained_state().items()}  # an int64 counter as float
    body = assert_problem(
        upload(api, model_id, safetensors_bytes(floats)), 422, "checkpoint_mismatch"
    )
    assert any("num_batches_tracked" in p for p in body["problems"])
    # float64 beyond float32's range turns infinite once loaded into the model.
    huge = {
        **trained_state(),
        "fc.bias": torch.full_like(trained_state()["fc.bias"], 1e300, dtype=torch.float64),
    }
    body = assert_problem(
        upload(api, model_id, safetensors_bytes(huge)), 422, "checkpoint_mismatch"
    )
    assert any("infinite" in p for p in body["problems"])
    assert snapshot(store) == before


def test_float8_weights_are_checked_not_a_500(api, registered):
    import torch

    # torch.isfinite has no float8_e4m3fn kernel: the finiteness check used to raise (a 500).
    state = {
        k: v.to(torch.float8_e4m3fn) if v.is_floating_point() else v
        for k, v in trained_state().items()
    }
    response = upload(api, registered["model"]["id"], safetensors_bytes(state))
    assert response.status_code == 201, response.text


def test_bad_parent_version_ids(api, registered, store):
    before = snapshot(store)
    model_id = registered["model"]["id"]
    files = {"file": ("w.safetensors", safetensors_bytes(), "application/octet-stream")}

    def with_parent(parent: str):
        return api.post(
            f"/v1/models/{model_id}/versions", files=files, data={"parent_version_id": parent}
        )

    # A NUL reached PostgreSQL before (its refusal was a 422 there and a 404 on SQLite).
    assert_problem(with_parent("a\x00b"), 422, "validation_error")
    assert_problem(with_parent("x" * 201), 422, "validation_error")
    assert_problem(with_parent("no-such-version"), 404, "model_version_not_found")
    assert snapshot(store) == before
