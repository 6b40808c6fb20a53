"""Every kind of bad input gets its 4xx problem document and leaves nothing behind."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.api.conftest import BACKENDS, snapshot
from tests.helpers import (
    MiB,
    largest_storage,
    member,
    model_body,
    raw_zip,
    safetensors_bytes,
    torch_bytes,
    torch_members,
    trained_state,
    zeros_member,
)

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
    assert_problem(
        submit(api, registered, method="unsir", params={"noise_steps": 0}),
        422,
        "invalid_method_params",
    )
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
    assert_problem(upload_npz(api, buf.getvalue()), 413, "upload_inflates_too_far")
    # An .npy header declaring 10^12 images of 8x8 over a few bytes of data.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (10**12, 8, 8)}
    )
    lying = {**npz_members(), "images.npy": header.getvalue() + bytes(64)}
    assert_problem(upload_npz(api, zip_bytes(lying)), 422, "dataset_too_large")
    assert snapshot(store) == before


def test_npz_that_inflates_past_the_limit(api, store, monkeypatch):
    from tests.conftest import reset_caches

    before = snapshot(store)
    monkeypatch.setenv("NEPENTHE_MAX_INFLATED_BYTES", "1000000")
    reset_caches()
    # 10 MB of zeros deflates to about 10 kB: a ratio of 1000, truthfully declared.
    bomb = zip_bytes(npz_members(np.zeros((10, 1000, 1000), np.uint8)), zipfile.ZIP_DEFLATED)
    assert len(bomb) < 100_000
    body = assert_problem(upload_npz(api, bomb), 413, "upload_inflates_too_far")
    assert "1000000" in body["detail"]
    assert snapshot(store) == before


def test_npz_bombs_are_refused_at_the_default_limits(api, store):
    before = snapshot(store)
    # 1 MB inflating to 1 GiB of valid (black) 1024x1024 images: refused by its ratio.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (1024, 1024, 1024)}
    )
    images = zeros_member("images.npy", 1024, prefix=header.getvalue())
    labels = member("labels.npy", npy_bytes(np.arange(1024) % 2))
    bomb = raw_zip([images, labels])
    assert len(bomb) < 1.1 * MiB
    body = assert_problem(upload_npz(api, bomb), 413, "upload_inflates_too_far")
    assert "times its size" in body["detail"]
    # A member whose data runs on past the size the directory declares for it.
    small = npy_bytes(np.zeros((10, 8, 8), np.uint8))
    lying = zeros_member("images.npy", 64, declared=len(small), prefix=small)
    labels = member("labels.npy", npy_bytes(np.arange(10) % 2))
    body = assert_problem(upload_npz(api, raw_zip([lying, labels])), 413, "upload_inflates_too_far")
    assert "inflates past" in body["detail"]
    assert snapshot(store) == before
    # The same archives, honest and deflated, are accepted.
    honest = raw_zip([member("images.npy", small, True), labels])
    assert upload_npz(api, honest).status_code == 201


def torch_bomb(mib: int, declared: int | None = None) -> bytes:
    """The trained state's .pt archive, its largest storage replaced by deflated zeros."""
    members = torch_members(trained_state())
    i = largest_storage(members)
    members[i] = zeros_member(members[i].name, mib, declared)
    return raw_zip(members)


def test_torch_bombs_are_refused_before_torch_reads_them(api, registered, store):
    before = snapshot(store)
    model_id = registered["model"]["id"]
    # 512 MiB of zeros in half a megabyte (the 511 kB .pt took 500 MiB to refuse).
    bomb = torch_bomb(512)
    assert len(bomb) < 600_000
    body = assert_problem(upload(api, model_id, bomb, "w.pt"), 413, "upload_inflates_too_far")
    assert "times its size" in body["detail"]
    # A storage that inflates past the size its directory entry declares.
    members = torch_members(trained_state())
    lying = torch_bomb(64, declared=members[largest_storage(members)].size)
    body = assert_problem(upload(api, model_id, lying, "w.pt"), 413, "upload_inflates_too_far")
    assert "inflates past" in body["detail"]
    assert snapshot(store) == before
    # The same archive, honestly deflated, is accepted.
    honest = raw_zip(torch_members(trained_state(), deflated=True))
    assert upload(api, model_id, honest, "w.pt").status_code == 201


def test_checkpoints_past_the_inflate_limit_or_the_architecture(
    api, registered, store, monkeypatch
):
    from tests.conftest import reset_caches

    before = snapshot(store)
    model_id = registered["model"]["id"]
    # No ratio bound to speak of: 80 MiB is still more than tiny_cnn can need (about 64.6 MiB).
    monkeypatch.setenv("NEPENTHE_MAX_COMPRESSION_RATIO", "1000000")
    reset_caches()
    body = assert_problem(upload(api, model_id, torch_bomb(80), "w.pt"), 422, "checkpoint_mismatch")
    assert "another network's weights" in body["problems"][0]
    monkeypatch.setenv("NEPENTHE_MAX_INFLATED_BYTES", "10000")
    reset_caches()
    stored = torch_bytes(trained_state())  # a plain torch.save archive of about 100 kB
    body = assert_problem(upload(api, model_id, stored, "w.pt"), 413, "upload_inflates_too_far")
    assert "10000 bytes" in body["detail"]
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


# Inputs that once produced a 500 or a wrong answer: numbers, characters and nesting JSON allows
# but the service cannot keep, method parameters past what fits, constructors that crash,
# archives that lie about their size, datasets that vanish.

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


def test_lone_surrogates_and_deep_nesting_are_refused(api, registered, store):
    before = snapshot(store)
    raw = (
        b'{"name": "s", "architecture": {"name": "tiny_cnn", "args": {"in_channels": 1}},'
        b' "input_shape": [1, 8, 8], "class_names": ["\\ud800", "b"]}'
    )
    assert_problem(api.post("/v1/models", content=raw, headers=JSON), 422, "validation_error")
    deep: object = 1
    for _ in range(100):
        deep = [deep]
    assert_problem(submit(api, registered, params={"a": deep}), 422, "validation_error")
    assert_problem(
        api.post("/v1/models", content=b'{"name": "\xff"}', headers=JSON), 400, "malformed_body"
    )
    assert snapshot(store) == before


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


def test_an_explicit_null_threshold_is_not_a_replay_of_an_omitted_one(api, registered):
    """Null switches a check off, omitted keeps the default; the same key must not silently
    return a request made under other thresholds."""
    body = {
        "model_version_id": registered["version"]["id"],
        "dataset_id": registered["dataset"]["id"],
        "forget_classes": [3],
        "acceptance": {},
    }
    headers = {"Idempotency-Key": "review3-null"}
    first = api.post("/v1/deletion-requests", json=body, headers=headers)
    assert first.status_code == 202
    assert first.json()["acceptance"]["max_retain_drop"] == 0.05
    again = api.post("/v1/deletion-requests", json=body, headers=headers)
    assert again.json()["id"] == first.json()["id"]
    other = {**body, "acceptance": {"max_retain_drop": None}}
    response = api.post("/v1/deletion-requests", json=other, headers=headers)
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"


def test_out_of_range_numbers_in_paths_and_tokens(api, registered):
    model_id = registered["model"]["id"]
    assert_problem(
        api.get(f"/v1/models/{model_id}/versions/99999999999999999999999"), 422, "validation_error"
    )
    assert_problem(api.get(f"/v1/models/{model_id}/versions/0"), 422, "validation_error")
    assert_problem(
        api.get("/v1/audit/events", params={"page_token": "²"}), 422, "invalid_page_token"
    )


def test_time_bounds_out_of_range(api):
    for params in ({"since": "9999-12-31T23:59:59-05:00"}, {"until": "0001-01-01T00:00+05:00"}):
        assert_problem(api.get("/v1/audit/events", params=params), 422, "invalid_time_bound")


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
        assert_problem(
            submit(api, registered, method="unsir", params=params), 422, "invalid_method_params"
        )
    for params in ({"budget_epochs": 0}, {"tails": [0.2, 1.5]}, {"head_share": 2}):
        body = assert_problem(
            submit(api, registered, method="auto", params=params), 422, "invalid_method_params"
        )
        assert next(iter(params)) in body["detail"]
    assert snapshot(store) == before


def test_method_parameters_of_the_wrong_type_are_refused_not_coerced(api, registered, store):
    before = snapshot(store)
    for method, params in (
        ("auto", {"lr": "0.1"}),
        ("finetune", {"epochs": True}),
        ("unsir", {"label_fix": "yes"}),
        ("unsir", {"repair_epochs": 2.5}),
        ("auto", {"tails": "0.2"}),
    ):
        body = assert_problem(
            submit(api, registered, method=method, params=params), 422, "invalid_method_params"
        )
        assert next(iter(params)) in body["detail"]
    assert snapshot(store) == before
    # What JSON has no other way to say is accepted: an integer for a float, an array of tails.
    fine = submit(api, registered, method="auto", params={"lr": 1, "tails": [0.3]})
    assert fine.status_code == 202, fine.text
    assert fine.json()["params"]["lr"] == 1.0 and fine.json()["params"]["tails"] == [0.3]


def test_an_impair_set_too_large_for_memory(api, registered, store, monkeypatch):
    from tests.conftest import reset_caches

    monkeypatch.setenv("NEPENTHE_MAX_NOISE_BYTES", str(1024**2))
    reset_caches()
    before = snapshot(store)
    body = assert_problem(submit(api, registered, method="unsir"), 422, "invalid_method_params")
    assert "GiB" in body["detail"]
    assert snapshot(store) == before
    small = submit(api, registered, method="unsir", params={"noise_batch": 32, "noise_repeats": 2})
    assert small.status_code == 202


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


def test_unbounded_architecture_arguments_are_refused_naming_them(api, store, monkeypatch):
    from tests.conftest import reset_caches

    before = snapshot(store)
    for name, args, shape, named in (
        ("small_vit", {"hidden_dim": 10**7}, [3, 32, 32], "hidden_dim"),
        ("mlp", {"in_features": 64, "hidden": 10**9}, [1, 8, 8], "hidden"),
        ("mobilenet_v2", {"inverted_residual_setting": [[1, 16, 10**9, 1]]}, [3, 32, 32], ""),
        ("mobilenet_v2", {"width_mult": 1000}, [3, 32, 32], "width_mult"),
        ("vit_b_16", {"image_size": 10**6}, [3, 32, 32], "image_size"),
    ):
        body = {
            **model_body("unbounded"),
            "input_shape": shape,
            "architecture": {"name": name, "args": args},
        }
        problem = assert_problem(api.post("/v1/models", json=body), 422, "invalid_architecture")
        assert f"argument '{named or next(iter(args))}'" in problem["detail"], problem
    # Within every argument's range, the parameter count (counted on meta) is bounded too.
    monkeypatch.setenv("NEPENTHE_MAX_MODEL_PARAMETERS", "1000")
    reset_caches()
    problem = assert_problem(
        api.post("/v1/models", json=model_body("big")), 422, "invalid_architecture"
    )
    assert "parameters and buffers" in problem["detail"]
    assert snapshot(store) == before


def test_architecture_arguments_too_large_to_build_are_refused_at_once(api, store):
    before = snapshot(store)
    for args in (
        {"blocks": [2000]},
        {"blocks": [1] * 9},
        {"width": 10**6},
        {"width": 512, "blocks": [1] * 5},
    ):
        body = {
            **model_body("big"),
            "input_shape": [1, 8, 8],
            "architecture": {"name": "small_resnet", "args": {"in_channels": 1, **args}},
        }
        detail = assert_problem(api.post("/v1/models", json=body), 422, "invalid_architecture")
        assert "at most" in detail["detail"], args  # refused by the bounds, not by building
    assert snapshot(store) == before


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


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


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
def test_malformed_npz_archives(api, store, arrays):
    before = snapshot(store)
    assert_problem(upload_npz(api, npz_bytes(**arrays)), 422, "dataset_unreadable")
    assert snapshot(store) == before


def test_an_archive_whose_header_declares_a_huge_array(api, store):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10**15,)}
    )
    archive = zip_bytes(
        {"images.npy": header.getvalue() + b"\0" * 16, "labels.npy": npy_bytes(np.arange(3))}
    )
    before = snapshot(store)
    assert_problem(upload_npz(api, archive), 422, "dataset_too_large")
    assert snapshot(store) == before


def test_npz_split_arrays(api, store):
    images, labels = np.zeros((6, 4, 4), np.uint8), np.arange(6) % 3
    structured = np.zeros(6, dtype=[("a", "i4")])
    before = snapshot(store)
    assert_problem(
        upload_npz(api, npz_bytes(images=images, labels=labels, split=structured)),
        422,
        "dataset_unreadable",
    )
    surrogate = np.array(["a", "b", "\ud800"])
    with_surrogate = npz_bytes(images=images, labels=labels, class_names=surrogate)
    assert_problem(upload_npz(api, with_surrogate), 422, "dataset_unreadable")
    assert snapshot(store) == before
    as_bytes = np.array([b"train"] * 4 + [b"test"] * 2)
    made = upload_npz(api, npz_bytes(images=images, labels=labels, split=as_bytes))
    assert made.status_code == 201, made.text
    assert (made.json()["train_count"], made.json()["test_count"]) == (4, 2)
