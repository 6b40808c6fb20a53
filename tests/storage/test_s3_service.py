"""The service on the S3 store: the API in-process, then real API and worker processes.

tests/storage/conftest.py's ``service_env`` points every service here at a fresh bucket."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from client.api import NepentheClient
from client.local import LocalService
from tests.conftest import ROOT
from tests.e2e.test_service import register, submit
from tests.helpers import model_body, safetensors_bytes
from tests.storage.test_s3_store import bucket_keys, files_under
from unlearning import architectures


def upload_version(api) -> dict:
    """A version with untrained weights: the store does not care, and training costs time."""
    model = api.post("/v1/models", json=model_body()).json()
    untrained = architectures.build_classifier("tiny_cnn", 10, {"in_channels": 1}).state_dict()
    files = {"file": ("m.safetensors", safetensors_bytes(untrained), "application/octet-stream")}
    response = api.post(f"/v1/models/{model['id']}/versions", files=files)
    assert response.status_code == 201, response.text
    return response.json()


def object_key(sha256: str, suffix: str) -> str:
    return f"sha256/{sha256[:2]}/{sha256}{suffix}"


def test_uploads_and_downloads_go_through_the_bucket(api, s3, service_env):
    bucket = service_env["NEPENTHE_S3_BUCKET"]
    version = upload_version(api)
    key = object_key(version["sha256"], ".safetensors")
    assert bucket_keys(s3, bucket) == [key]
    download = api.get(version["download_url"])
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == version["sha256"]

    npz = {"images": np.zeros((20, 4, 4), np.uint8), "labels": np.arange(20) % 2}
    path = Path(service_env["NEPENTHE_STORE_CACHE_DIR"]).parent / "d.npz"
    np.savez(path, **npz)
    files = {"file": ("d.npz", path.read_bytes())}
    dataset = api.post("/v1/datasets/npz", files=files, data={"name": "d"}).json()
    assert dataset["location"].removeprefix("store:") in bucket_keys(s3, bucket)
    assert files_under(Path(service_env["NEPENTHE_STORE_DIR"])) == []


def test_a_damaged_or_lost_object_is_reported_not_served(api, s3, service_env):
    bucket, cache = service_env["NEPENTHE_S3_BUCKET"], service_env["NEPENTHE_STORE_CACHE_DIR"]
    version = upload_version(api)
    key = object_key(version["sha256"], ".safetensors")
    s3.put_object(Bucket=bucket, Key=key, Body=b"not the weights")
    damaged = api.get(version["download_url"])
    assert damaged.status_code == 500
    assert damaged.json()["code"] == "checkpoint_missing"
    assert "restore it from backup" in damaged.json()["detail"]

    s3.delete_object(Bucket=bucket, Key=key)
    shutil.rmtree(cache, ignore_errors=True)
    lost = api.get(version["download_url"])
    assert lost.status_code == 500
    assert lost.json()["code"] == "checkpoint_missing"


@pytest.fixture
def client(service_env: dict[str, str], tmp_path: Path) -> Iterator[NepentheClient]:
    # The worker has a cache folder of its own: the two processes share only the bucket.
    worker_cache = {"NEPENTHE_STORE_CACHE_DIR": str(tmp_path / "worker-cache")}
    with LocalService(service_env, ROOT, tmp_path / "logs", worker_env=worker_cache) as running:
        api = NepentheClient(running.url, running.admin_key)
        yield api
        api.close()


@pytest.mark.e2e
def test_a_job_keeps_every_checkpoint_in_the_bucket(client, s3, service_env, tmp_path):
    """Real API and worker processes: the worker reads the original from the bucket and writes
    the unlearned checkpoint there; the API serves it from there; the local store stays empty."""
    reg = register(client, tmp_path)
    job = client.wait(submit(client, reg)["job"]["id"], timeout=120)
    assert job["status"] == "succeeded", job["error"]

    out = job["output_version"]
    keys = bucket_keys(s3, service_env["NEPENTHE_S3_BUCKET"])
    assert object_key(out["sha256"], ".safetensors") in keys
    assert object_key(reg["version"]["sha256"], ".safetensors") in keys
    target = tmp_path / "unlearned.safetensors"
    assert client.download(out["download_url"], target) == out["sha256"]
    assert hashlib.sha256(target.read_bytes()).hexdigest() == out["sha256"]
    assert files_under(Path(service_env["NEPENTHE_STORE_DIR"])) == []


def test_an_unreachable_store_answers_503_and_changes_nothing(api, service_env, monkeypatch):
    from tests.conftest import reset_caches, snapshot

    version = upload_version(api)
    monkeypatch.setenv("NEPENTHE_S3_ENDPOINT_URL", "http://127.0.0.1:1")  # nothing listens
    reset_caches()
    before = snapshot(Path(service_env["NEPENTHE_STORE_DIR"]))
    upload = {"file": ("m.safetensors", safetensors_bytes(), "application/octet-stream")}
    for response in (
        api.get(version["download_url"]),
        api.post(f"/v1/models/{version['model_id']}/versions", files=upload),
    ):
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "store_unavailable"
        assert response.headers["retry-after"] == "30"
    assert snapshot(Path(service_env["NEPENTHE_STORE_DIR"])) == before  # not even an audit row
