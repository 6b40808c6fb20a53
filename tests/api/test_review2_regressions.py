"""Second review: locks, surrogates, nesting, time bounds, archive bombs, memory bounds."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from sqlalchemy import text, update

from tests.api.conftest import BACKENDS, snapshot
from tests.api.test_bad_input import assert_problem, submit

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)
JSON = {"content-type": "application/json"}


def test_reads_are_not_blocked_by_a_writer_holding_its_transaction(api, registered):
    from app.db import session_scope
    from app.orm import Model

    job_id = submit(api, registered).json()["job"]["id"]
    with session_scope() as writer:  # holds the write lock (SQLite) until the block ends
        writer.execute(update(Model).values(task="classification"))
        assert api.get(f"/v1/jobs/{job_id}").status_code == 200
        assert api.get("/v1/models").status_code == 200
        assert api.get("/healthz").status_code == 200


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


def test_time_bounds_out_of_range(api):
    for params in ({"since": "9999-12-31T23:59:59-05:00"}, {"until": "0001-01-01T00:00+05:00"}):
        assert_problem(api.get("/v1/audit/events", params=params), 422, "invalid_time_bound")


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def upload_npz(api, payload: bytes, name: str = "n"):
    return api.post("/v1/datasets/npz", files={"file": ("d.npz", payload)}, data={"name": name})


def test_an_archive_whose_header_declares_a_huge_array(api, store):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10**15,)}
    )
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("images.npy", header.getvalue() + b"\0" * 16)
        z.writestr("labels.npy", npz_member(np.arange(3)))
    before = snapshot(store)
    assert_problem(upload_npz(api, archive.getvalue()), 422, "dataset_too_large")
    assert snapshot(store) == before


def npz_member(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


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
    made = upload_npz(api, npz_bytes(images=images, labels=labels, split=as_bytes), "bytes")
    assert made.status_code == 201, made.text
    assert (made.json()["train_count"], made.json()["test_count"]) == (4, 2)


def test_an_impair_set_too_large_for_memory(api, registered, store, monkeypatch):
    from tests.conftest import reset_caches

    monkeypatch.setenv("NEPENTHE_MAX_NOISE_BYTES", str(1024**2))
    reset_caches()
    before = snapshot(store)
    body = assert_problem(submit(api, registered), 422, "invalid_method_params")
    assert "GiB" in body["detail"]
    assert snapshot(store) == before
    small = submit(api, registered, params={"noise_batch": 32, "noise_repeats": 2})
    assert small.status_code == 202


def test_unsent_jobs_are_taken_for_resending_once(api, registered):
    from app.db import session_scope
    from app.jobs.service import count_sent_queued, take_stale_sent, take_unsent

    job_id = submit(api, registered).json()["job"]["id"]
    with session_scope() as session:  # sent at submit
        assert take_unsent(session, grace_s=0) == []
        assert count_sent_queued(session) == 1
        assert take_stale_sent(session, resend_after_s=60, limit=1) == []
        assert take_stale_sent(session, resend_after_s=0, limit=0) == []
        assert take_stale_sent(session, resend_after_s=0, limit=1) == [job_id]
    with session_scope() as session:  # taken, not yet sent again: once only, until the grace
        assert count_sent_queued(session) == 0
        assert take_stale_sent(session, resend_after_s=0, limit=1) == []
        assert take_unsent(session, grace_s=60) == []
        assert take_unsent(session, grace_s=0) == [job_id]


def test_timestamps_come_back_in_utc_whatever_the_database_time_zone(api, registered, request):
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


def test_an_explicit_null_threshold_is_not_a_replay_of_an_omitted_one(api, registered):
    """Review 3: null switches a check off, omitted keeps the default; the same key must not
    silently return a request made under other thresholds."""
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
