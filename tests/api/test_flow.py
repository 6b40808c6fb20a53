"""The API's happy paths without a worker: registration, lineage, queued jobs, cancel, audit."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from sqlalchemy import text

from tests.api.conftest import BACKENDS
from tests.helpers import model_body, safetensors_bytes

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)


def submit(api, registered, **extra):
    body = {
        "model_version_id": registered["version"]["id"],
        "dataset_id": registered["dataset"]["name"],  # a dataset may be named by its name
        "forget_classes": ["3", 8],  # names and indices mix
        **extra,
    }
    return api.post(
        "/v1/deletion-requests", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}
    )


def test_registration_records_digest_size_and_lineage(api, registered):
    version = registered["version"]
    payload = safetensors_bytes()
    assert version["number"] == 1
    assert version["parent_version_id"] is None
    assert version["produced_by_request_id"] is None
    response = api.get(version["download_url"])
    assert response.status_code == 200
    assert response.headers["etag"] == f'"{version["sha256"]}"'
    assert hashlib.sha256(response.content).hexdigest() == version["sha256"]
    assert version["size_bytes"] == len(response.content)
    assert len(response.content) <= len(payload) + 256
    again = api.get(version["download_url"], headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304
    child = api.post(
        f"/v1/models/{registered['model']['name']}/versions",
        files={"file": ("w.safetensors", payload)},
        data={"parent_version_id": version["id"]},
    ).json()
    assert child["number"] == 2
    assert child["parent_version_id"] == version["id"]
    listed = api.get(f"/v1/models/{registered['model']['id']}/versions").json()
    assert [v["number"] for v in listed] == [1, 2]


def test_submit_answers_202_with_location_and_a_queued_job(api, registered):
    response = submit(api, registered, caller_reference="DSR-1", params={"head_share": 0.5})
    assert response.status_code == 202, response.text
    request = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{request['job']['id']}"
    assert request["forget_classes"] == [3, 8]
    assert request["forget_class_names"] == ["3", "8"]
    assert request["method"] == "auto"  # the default for classes
    assert request["params"]["head_share"] == 0.5
    assert request["params"]["budget_epochs"] == 0.1  # every default is recorded
    job = api.get(response.headers["Location"]).json()
    assert job["status"] == "queued"
    assert job["progress"] == 0.0
    assert api.get(f"/v1/deletion-requests/{request['id']}").json()["job"]["id"] == job["id"]


def test_a_submission_answers_the_document_a_read_returns(api, registered):
    """The answer to a submission is built from the rows it wrote, not read back: it must be
    what a later GET of the request says, field for field, and a replay must say the same."""
    body = {
        "model_version_id": registered["version"]["id"],
        "dataset_id": registered["dataset"]["id"],
        "forget_classes": [2],
        "caller_reference": "DSR-2",
    }
    key = {"Idempotency-Key": str(uuid.uuid4())}
    response = api.post("/v1/deletion-requests", json=body, headers=key)
    assert response.status_code == 202, response.text
    accepted = response.json()
    read = api.get(f"/v1/deletion-requests/{accepted['id']}").json()
    assert accepted == read
    replay = api.post("/v1/deletion-requests", json=body, headers=key)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == read


def test_cancel_a_queued_job_then_refuse_a_second_cancel(api, registered):
    job_id = submit(api, registered).json()["job"]["id"]
    canceled = api.post(f"/v1/jobs/{job_id}/cancel")
    assert canceled.status_code == 202
    assert canceled.json()["status"] == "canceled"
    assert canceled.json()["finished_at"] is not None
    again = api.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert again.json()["code"] == "job_not_cancelable"
    events = api.get(f"/v1/jobs/{job_id}/events").json()
    assert [(e["from_status"], e["to_status"]) for e in events] == [
        (None, "queued"),
        ("queued", "canceled"),
    ]


def test_audit_filters_and_pages(api, registered):
    first = submit(api, registered, caller_reference="DSR-A").json()
    submit(api, registered, caller_reference="DSR-B")
    by_ref = api.get("/v1/audit/events", params={"caller_reference": "DSR-A"}).json()["items"]
    assert [e["action"] for e in by_ref] == ["deletion_request.created", "job.queued"]
    assert all(e["request_id"] == first["id"] for e in by_ref)
    by_request = api.get("/v1/audit/events", params={"request_id": first["id"]}).json()["items"]
    assert by_request == by_ref
    model_id = registered["model"]["id"]
    everything = api.get("/v1/audit/events", params={"model_id": model_id}).json()["items"]
    assert [e["action"] for e in everything][:2] == ["model.registered", "model_version.uploaded"]
    pages, token = [], None
    while True:
        params = {"model_id": model_id, "limit": 2, **({"page_token": token} if token else {})}
        page = api.get("/v1/audit/events", params=params).json()
        pages.append(page["items"])
        token = page["next_page_token"]
        if token is None:
            break
    assert [e for p in pages for e in p] == everything
    assert all(len(p) <= 2 for p in pages)
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert api.get("/v1/audit/events", params={"since": future}).json()["items"] == []
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert len(
        api.get("/v1/audit/events", params={"since": past, "model_id": model_id}).json()["items"]
    ) == len(everything)


def test_npz_dataset_upload(api, tmp_path):
    path = tmp_path / "tiny.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path, images=rng.integers(0, 255, (50, 8, 8), dtype=np.uint8), labels=np.arange(50) % 5
    )
    response = api.post(
        "/v1/datasets/npz", files={"file": ("tiny.npz", path.read_bytes())}, data={"name": "tiny"}
    )
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["train_count"] + dataset["test_count"] == 50
    assert dataset["class_names"] == ["0", "1", "2", "3", "4"]
    assert dataset["image_shape"] == [1, 8, 8]
    assert dataset["location"].startswith("store:")


def test_a_refused_npz_upload_leaves_no_file_behind(api, store, tmp_path):
    from tests.conftest import snapshot

    def upload(name: str, seed: int):
        path = tmp_path / f"{name}-{seed}.npz"
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 255, (40, 8, 8), dtype=np.uint8)
        np.savez(path, images=images, labels=np.arange(40) % 4)
        return api.post(
            "/v1/datasets/npz", files={"file": ("d.npz", path.read_bytes())}, data={"name": name}
        )

    assert upload("taken", 0).status_code == 201
    before = snapshot(store)
    refused = upload("taken", 1)  # other bytes, same name
    assert refused.status_code == 409 and refused.json()["code"] == "name_taken"
    assert snapshot(store) == before


def test_openapi_lists_every_route(api):
    spec = api.get("/openapi.json").json()
    assert {
        "/v1/models",
        "/v1/deletion-requests",
        "/v1/jobs/{job_id}/cancel",
        "/v1/audit/events",
    } <= set(spec["paths"])


def test_a_model_keeps_the_training_record_it_was_registered_with(api):
    record = {"epochs": 15, "optimizer": "adam", "lr": 0.003, "batch_size": 64}
    created = api.post("/v1/models", json={**model_body("recorded"), "training": record})
    assert created.status_code == 201, created.text
    stored = {**record, "augmentation": None}
    assert created.json()["training"] == stored
    assert api.get(f"/v1/models/{created.json()['id']}").json()["training"] == stored
    bad = api.post("/v1/models", json={**model_body("unrecorded"), "training": {"epochs": 0}})
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    listed = {m["name"]: m["training"] for m in api.get("/v1/models").json()}
    assert listed["recorded"] == stored
    plain = api.post("/v1/models", json=model_body("plain")).json()
    assert plain["training"] is None  # optional


def test_filtering_requests_by_model(api, registered):
    made = submit(api, registered, caller_reference="F-1").json()
    found = api.get("/v1/deletion-requests", params={"model_id": registered["model"]["id"]})
    assert found.status_code == 200, found.text
    assert [r["id"] for r in found.json()] == [made["id"]]
    assert api.get("/v1/deletion-requests", params={"model_id": "other"}).json() == []


def test_an_id_wins_over_a_name(api, registered):
    original = registered["model"]
    impostor = api.post("/v1/models", json=model_body(original["id"]))
    assert impostor.status_code == 201
    assert api.get(f"/v1/models/{original['id']}").json()["name"] == original["name"]
    assert api.get(f"/v1/models/{impostor.json()['id']}").json()["name"] == original["id"]


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


def test_timestamps_come_back_in_utc_whatever_the_database_time_zone(api, registered):
    from app.db import get_engine

    engine = get_engine()
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            name = conn.execute(text("SELECT current_database()")).scalar_one()
            conn.execute(text(f"ALTER DATABASE \"{name}\" SET timezone TO 'Asia/Kolkata'"))
        engine.dispose()  # new connections pick the database's time zone up
    events = api.get("/v1/audit/events").json()["items"]
    assert events
    assert all(e["at"].endswith(("+00:00", "Z")) for e in events), events[0]["at"]
