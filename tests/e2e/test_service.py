"""Real processes: uvicorn API + Celery worker, on the embedded default and on production
backends (PostgreSQL + Redis), driven through the HTTP API with the project's own client."""

from __future__ import annotations

import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from client.api import NepentheClient
from client.local import LocalService
from tests.conftest import ROOT
from tests.helpers import ARCH, CLASS_NAMES, SMALL_DATA_PARAMS, SPEC, trained_state
from unlearning import architectures, checkpoints, data
from unlearning.evaluate import accuracy_report, count_correct

BACKENDS = ["embedded", "production"]
pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("service_env", BACKENDS, indirect=True)]
FORGET = [3, 8]


def register(client: NepentheClient, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "original.safetensors"
    import safetensors.torch

    safetensors.torch.save_file(trained_state(), str(path))
    model = client.register_model(
        name="digits-cnn",
        task="classification",
        architecture=ARCH,
        input_shape=[1, 8, 8],
        normalization={"mean": [0.5], "std": [0.5]},
        class_names=CLASS_NAMES,
    )
    version = client.upload_version(model["id"], path)
    dataset = client.register_dataset("digits", "sklearn_digits")
    return {"model": model, "version": version, "dataset": dataset}


def submit(client: NepentheClient, reg: dict[str, Any], **params: Any) -> dict[str, Any]:
    request, _ = client.submit_deletion(
        idempotency_key=str(uuid.uuid4()),
        model_version_id=reg["version"]["id"],
        dataset_id=reg["dataset"]["id"],
        forget_classes=FORGET,
        method="unsir",  # the fault tests catch jobs in UNSIR's long noise phase
        params={**SMALL_DATA_PARAMS, **params},
        caller_reference="DSR-E2E",
    )
    return request


def measure(path: Path) -> dict[str, Any]:
    model = architectures.build_classifier("tiny_cnn", 10, {"in_channels": 1})
    checkpoints.load_into(model, checkpoints.load_file(path))
    test = data.open_split("sklearn_digits", None, "test")
    counts = count_correct(model, test, np.arange(len(test)), SPEC, 10, torch.device("cpu"))
    return accuracy_report(counts, FORGET, CLASS_NAMES)


def wait_for_log(path: Path, needle: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} never appeared in {path}")


def test_forget_two_classes_end_to_end(client, tmp_path):
    reg = register(client, tmp_path)
    original = measure(tmp_path / "original.safetensors")
    request = submit(client, reg)
    job = client.wait(request["job"]["id"], timeout=300)
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == 1.0

    out = job["output_version"]
    target = tmp_path / "unlearned.safetensors"
    digest = client.download(out["download_url"], target)
    assert digest == out["sha256"]
    import hashlib

    assert hashlib.sha256(target.read_bytes()).hexdigest() == out["sha256"]
    after = measure(target)
    assert after["forget_accuracy"] <= 0.05
    assert after["retain_accuracy"] >= original["retain_accuracy"] - 0.05
    # The service's own metrics agree with what we measured on the downloaded weights.
    assert job["metrics"]["after"]["forget_accuracy"] == pytest.approx(after["forget_accuracy"])
    assert job["metrics"]["before"]["retain_accuracy"] == pytest.approx(original["retain_accuracy"])
    assert set(job["metrics"]["phase_seconds"]) >= {"noise", "impair", "repair", "evaluate"}

    assert out["number"] == 2
    assert out["parent_version_id"] == reg["version"]["id"]
    assert out["produced_by_request_id"] == request["id"]
    actions = [e["action"] for e in client.audit(request_id=request["id"])]
    assert actions == [
        "deletion_request.created",
        "job.queued",
        "job.running",
        "job.succeeded",
        "model_version.downloaded",
    ]
    statuses = [e["to_status"] for e in client.job_events(job["id"])]
    assert statuses == ["queued", "running", "succeeded"]


def test_a_duplicate_delivery_does_nothing(client, service, tmp_path):
    reg = register(client, tmp_path)
    job = client.wait(submit(client, reg)["job"]["id"], timeout=300)
    assert job["status"] == "succeeded"
    from app.queue import send_job

    assert send_job(job["id"])  # the broker delivers the same job a second time
    wait_for_log(service.log_dir / "worker.log", f"job {job['id']} is not queued")
    again = client.get_job(job["id"])
    assert again["output_version"]["id"] == job["output_version"]["id"]
    assert again["attempts"] == 1
    versions = client.http.get(f"/v1/models/{reg['model']['id']}/versions").json()
    assert [v["number"] for v in versions] == [1, 2]
    assert [e["to_status"] for e in client.job_events(job["id"])] == [
        "queued",
        "running",
        "succeeded",
    ]


def test_cancel_a_running_job(client, tmp_path):
    reg = register(client, tmp_path)
    job_id = submit(client, reg, noise_steps=1_000_000, noise_batch=8)["job"]["id"]  # under the cap
    deadline = time.monotonic() + 120
    while client.get_job(job_id)["phase"] != "noise":
        assert time.monotonic() < deadline, "the job never started learning noise"
        time.sleep(0.1)
    assert client.cancel_job(job_id)["cancel_requested"] is True
    job = client.wait(job_id, timeout=60)
    assert job["status"] == "canceled"
    assert job["output_version"] is None
    assert [e["to_status"] for e in client.job_events(job_id)] == ["queued", "running", "canceled"]
    actions = [e["action"] for e in client.audit(request_id=job["request_id"])]
    assert actions[-2:] == ["job.cancel_requested", "job.canceled"]
    versions = client.http.get(f"/v1/models/{reg['model']['id']}/versions").json()
    assert len(versions) == 1
    # The worker is free again: the next job runs to the end.
    assert client.wait(submit(client, reg)["job"]["id"], timeout=300)["status"] == "succeeded"


def test_a_job_whose_data_vanished_fails_with_its_reason(client, service_env, tmp_path):
    reg = register(client, tmp_path)
    npz = tmp_path / "d.npz"
    digits = data.open_split("sklearn_digits", None, "train")
    assert isinstance(digits, data.ArrayImages)
    np.savez(npz, images=(digits.data[:, 0].numpy() * 255).astype(np.uint8), labels=digits.targets)
    dataset = client.upload_npz_dataset("digits-npz", npz)
    store = Path(service_env["NEPENTHE_STORE_DIR"])
    (store / dataset["location"].removeprefix("store:")).unlink()
    request, _ = client.submit_deletion(
        model_version_id=reg["version"]["id"],
        dataset_id=dataset["id"],
        forget_classes=[1],
    )
    job = client.wait(request["job"]["id"], timeout=120)
    assert job["status"] == "failed"
    assert "not a readable .npz archive" in job["error"]
    assert job["output_version"] is None


def test_a_job_whose_message_was_lost_runs_when_a_worker_starts(service_env, tmp_path, monkeypatch):
    """The API accepts a request while the broker is unreachable (or loses the message);
    the job waits in the database and runs once a worker starts."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.conftest import new_key, reset_caches
    from tests.helpers import model_body, safetensors_bytes

    lost = (
        "redis://127.0.0.1:1/0"
        if service_env["NEPENTHE_BROKER_URL"].startswith("redis")
        else "filesystem://"
    )
    monkeypatch.setenv("NEPENTHE_BROKER_URL", lost)
    monkeypatch.setenv("NEPENTHE_BROKER_DIR", str(tmp_path / "nobody-reads-this"))
    reset_caches()
    # The organisation LocalService's admin key belongs to, so that key can poll the job.
    with TestClient(create_app(), headers={"Authorization": f"Bearer {new_key('local')}"}) as api:
        model = api.post("/v1/models", json=model_body()).json()
        files = {"file": ("m.safetensors", safetensors_bytes())}
        version = api.post(f"/v1/models/{model['id']}/versions", files=files).json()
        api.post("/v1/datasets", json={"name": "digits", "kind": "sklearn_digits"})
        response = api.post(
            "/v1/deletion-requests",
            json={
                "model_version_id": version["id"],
                "dataset_id": "digits",
                "forget_classes": [3],
            },
        )
        assert response.status_code == 202
    job_id = response.json()["job"]["id"]
    reset_caches()
    env = {**service_env, "NEPENTHE_REQUEUE_AFTER_S": "0"}
    with (
        LocalService(env, ROOT, tmp_path / "logs") as running,
        closing(NepentheClient(running.url, running.admin_key)) as client,
    ):
        assert client.wait(job_id, timeout=300)["status"] == "succeeded"
