"""Per-organisation quotas at submission and upload, on both backends: refused with a problem
before anything is written, counted in /metrics (the workers' side: tests/workers/test_fairness.py).
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import BACKENDS, snapshot
from tests.api.test_bad_input import assert_problem, submit, upload
from tests.conftest import FASHION_ROOT, new_key, reset_caches
from tests.helpers import model_body, safetensors_bytes, trained_state

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)


def configure(monkeypatch, **settings: object) -> None:
    for name, value in settings.items():
        monkeypatch.setenv(f"NEPENTHE_{name.upper()}", str(value))
    reset_caches()


def org_id(api, key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return str(api.get("/v1/whoami", headers=headers).json()["org_id"])


def scrape(api) -> dict[tuple[str, frozenset], float]:
    text = api.get("/metrics", headers={"Authorization": ""}).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def requests_and_created_events(api) -> tuple[int, int]:
    requests = api.get("/v1/deletion-requests").json()
    actions = [e["action"] for e in api.get("/v1/audit/events?limit=1000").json()["items"]]
    return len(requests), actions.count("deletion_request.created")


def test_submissions_past_the_per_minute_limit_get_429_with_retry_after(
    api, registered, monkeypatch
):
    configure(monkeypatch, quota_submissions_per_minute=3)
    first_key = str(uuid.uuid4())
    assert submit(api, registered, key=first_key).status_code == 202
    for _ in range(2):
        assert submit(api, registered).status_code == 202
    refused = submit(api, registered, key=str(uuid.uuid4()))
    body = assert_problem(refused, 429, "rate_limited")
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 60 and body["retry_after_s"] == retry_after
    assert body["limit"] == 3 and "NEPENTHE_QUOTA_SUBMISSIONS_PER_MINUTE" in body["detail"]
    assert requests_and_created_events(api) == (3, 3)  # nothing of the refused one written
    # A replay of an accepted request is no new submission: it still answers as before.
    replay = submit(api, registered, key=first_key)
    assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
    # Another organisation has a limit of its own.
    other = {"Authorization": f"Bearer {new_key('globex')}"}
    model = api.post("/v1/models", json=model_body(), headers=other).json()
    files = {"file": ("m.safetensors", safetensors_bytes(), "application/octet-stream")}
    version = api.post(f"/v1/models/{model['id']}/versions", files=files, headers=other).json()
    digits = {"name": "digits", "kind": "sklearn_digits"}
    dataset = api.post("/v1/datasets", json=digits, headers=other).json()
    body = {"model_version_id": version["id"], "dataset_id": dataset["id"], "forget_classes": [1]}
    assert api.post("/v1/deletion-requests", json=body, headers=other).status_code == 202
    scraped = scrape(api)
    labels = frozenset({"org": org_id(api), "reason": "submissions_per_minute"}.items())
    assert scraped[("nepenthe_quota_refusals_total", labels)] >= 1
    assert scraped[("nepenthe_quota_limit", frozenset({"quota": "submissions_per_minute"}.items()))]


def test_an_organisation_with_its_queue_full_gets_429_until_a_job_leaves_it(
    api, registered, monkeypatch
):
    configure(monkeypatch, quota_queued_jobs=2)
    jobs = [submit(api, registered).json()["job"]["id"] for _ in range(2)]
    refused = submit(api, registered)
    body = assert_problem(refused, 429, "quota_exceeded")
    assert refused.headers["Retry-After"] == "30"
    assert (body["quota"], body["limit"], body["queued_jobs"]) == ("queued_jobs", 2, 2)
    assert requests_and_created_events(api) == (2, 2)
    scraped = scrape(api)
    mine = frozenset({"org": org_id(api)}.items())
    assert scraped[("nepenthe_org_jobs_queued", mine)] == 2
    assert ("nepenthe_org_jobs_running", mine) not in scraped
    assert api.post(f"/v1/jobs/{jobs[0]}/cancel").status_code == 202
    assert submit(api, registered).status_code == 202


def test_a_job_estimated_over_the_cost_cap_is_refused_before_anything_is_written(
    api, registered, store
):
    before = snapshot(store)
    # UNSIR's noise alone: 1 class x 10,000,000 steps x 256 images, far past the default cap.
    days = {"method": "unsir", "params": {"noise_steps": 10_000_000}}
    body = assert_problem(submit(api, registered, **days), 422, "job_cost_limit_exceeded")
    assert body["limit_sample_passes"] == 50_000_000
    assert body["estimated_sample_passes"] >= 2.56e9
    assert "NEPENTHE_QUOTA_MAX_JOB_SAMPLE_PASSES" in body["detail"]
    assert snapshot(store) == before


def test_the_cost_counts_a_retrained_reference(api, registered, monkeypatch, store):
    # digits: 1,428 training images; without reading the split, its 10 classes are taken as
    # equal: 142 images each, 9 of them retained.
    configure(monkeypatch, quota_max_job_sample_passes=1_000_000)
    before = snapshot(store)
    thousand = {"method": "retrain", "params": {"epochs": 1000, "batch_size": 1}}
    body = assert_problem(
        submit(api, registered, reference=thousand), 422, "job_cost_limit_exceeded"
    )
    # The default method (auto: 0.1 epochs) plus 1000 epochs over the retain set.
    assert body["estimated_sample_passes"] == pytest.approx(1000 * 9 * 142 + 142.8)
    assert snapshot(store) == before
    ten = {"method": "retrain", "params": {"epochs": 10, "batch_size": 1}}
    assert submit(api, registered, reference=ten).status_code == 202


def test_the_default_cap_refuses_a_thousand_epoch_retrain_of_fashion_mnist(api, registered):
    # Counted from the dataset's recorded sizes (60,000 images): the split is not read.
    fashion = {"name": "fashion", "kind": "fashion_mnist", "location": str(FASHION_ROOT)}
    dataset = api.post("/v1/datasets", json=fashion).json()
    thousand = {"method": "retrain", "params": {"epochs": 1000, "batch_size": 1}}
    body = assert_problem(
        submit(api, registered, dataset_id=dataset["id"], reference=thousand),
        422,
        "job_cost_limit_exceeded",
    )
    # 1000 epochs over 9 classes of 6,000, plus the default method's 0.1 epochs.
    assert body["estimated_sample_passes"] == pytest.approx(1000 * 54_000 + 6_000)


def test_stored_bytes_past_the_quota_are_refused_before_they_are_stored(
    api, registered, monkeypatch, store, tmp_path
):
    size = registered["version"]["size_bytes"]
    mine = frozenset({"org": org_id(api)}.items())
    assert scrape(api)[("nepenthe_org_stored_bytes", mine)] == size
    configure(monkeypatch, quota_stored_bytes=size + size // 2)
    before = snapshot(store)
    retrained = safetensors_bytes({k: v + 1 for k, v in trained_state().items()})
    body = assert_problem(
        upload(api, registered["model"]["id"], retrained), 413, "storage_quota_exceeded"
    )
    assert (body["stored_bytes"], body["limit_bytes"]) == (size, size + size // 2)
    path = tmp_path / "d.npz"
    rows = size // 64 + 10  # 64 bytes an image: more than the half checkpoint left
    images = np.random.default_rng(0).integers(0, 255, (rows, 8, 8), dtype=np.uint8)
    np.savez(path, images=images, labels=np.arange(rows) % 10)
    files = {"file": (path.name, path.read_bytes())}
    refused = api.post("/v1/datasets/npz", files=files, data={"name": "d"})
    assert_problem(refused, 413, "storage_quota_exceeded")
    # A deletion request would store one more version of that size.
    assert_problem(submit(api, registered), 413, "storage_quota_exceeded")
    assert snapshot(store) == before
    configure(monkeypatch, quota_stored_bytes=10 * size + path.stat().st_size)
    assert api.post("/v1/datasets/npz", files=files, data={"name": "d"}).status_code == 201
    assert scrape(api)[("nepenthe_org_stored_bytes", mine)] == size + path.stat().st_size
    assert submit(api, registered).status_code == 202
