"""Fair turns across organisations, the per-organisation running limit and the job time limit,
on both databases, with the worker's own functions (the API's quotas: tests/api/test_quotas.py).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from app.db import session_scope
from app.orm import Job, JobStatus, utcnow
from tests.api.conftest import BACKENDS
from tests.api.test_bad_input import submit
from tests.conftest import new_key, reset_caches
from tests.helpers import model_body, safetensors_bytes
from workers.sweeper import release_held, sweep_once
from workers.tasks import _claim_and_run, claim, claim_next, finish

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)


def configure(monkeypatch, **settings: object) -> None:
    for name, value in settings.items():
        monkeypatch.setenv(f"NEPENTHE_{name.upper()}", str(value))
    reset_caches()


def queued_job(api, registered, **headers: str) -> str:
    response = submit(api, registered) if not headers else _submit_as(api, registered, headers)
    assert response.status_code == 202, response.text
    return str(response.json()["job"]["id"])


def _submit_as(api, registered, headers):
    body = {
        "model_version_id": registered["version"]["id"],
        "dataset_id": registered["dataset"]["id"],
        "forget_classes": [3],
    }
    return api.post("/v1/deletion-requests", json=body, headers=headers)


def other_org(api) -> tuple[dict[str, str], dict]:
    headers = {"Authorization": f"Bearer {new_key('globex')}"}
    model = api.post("/v1/models", json=model_body(), headers=headers).json()
    files = {"file": ("m.safetensors", safetensors_bytes(), "application/octet-stream")}
    version = api.post(f"/v1/models/{model['id']}/versions", files=files, headers=headers).json()
    digits = {"name": "digits", "kind": "sklearn_digits"}
    dataset = api.post("/v1/datasets", json=digits, headers=headers).json()
    return headers, {"model": model, "version": version, "dataset": dataset}


def run_turn(delivered: str) -> str:
    """One worker's turn on the message of ``delivered``: the job it claimed, ended."""
    claimed = claim_next(delivered)
    assert claimed is not None
    job_id, lease = claimed
    assert finish(job_id, JobStatus.failed, "ended by the test", lease=lease)
    return job_id


def sent_at(job_id: str):
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.sent_at


def test_one_worker_gives_an_organisation_that_waited_the_next_turn(api, registered):
    mine = [queued_job(api, registered) for _ in range(3)]
    headers, theirs = other_org(api)
    late = queued_job(api, theirs, **headers)
    # The broker delivers in the order sent: three messages of the first organisation, then one
    # of the second; the turns alternate, so the later organisation waits for one job, not three.
    order = [run_turn(delivered) for delivered in [*mine, late]]
    assert order == [mine[0], late, mine[1], mine[2]]
    assert claim_next(late) is None  # nothing left: a spare message claims nothing


def test_the_running_limit_holds_an_organisations_further_jobs_while_others_run(
    api, registered, monkeypatch
):
    configure(monkeypatch, quota_running_jobs=1)
    first, second = queued_job(api, registered), queued_job(api, registered)
    claimed = claim_next(first)
    assert claimed is not None and claimed[0] == first
    assert claim_next(second) is None  # its organisation runs its one job already
    job = api.get(f"/v1/jobs/{second}").json()
    assert (job["status"], job["phase"]) == ("queued", "held_by_quota")
    assert sent_at(second) is None
    swept = sweep_once()
    assert (swept["released"], swept["sent"]) == (0, 0)  # held, not sent again and again
    headers, theirs = other_org(api)
    other = queued_job(api, theirs, **headers)
    turn = claim_next(other)
    assert turn is not None and turn[0] == other  # another organisation is not held up
    assert finish(first, JobStatus.failed, "ended by the test", lease=claimed[1])
    assert release_held() == 1  # the slot is free: the held job is sent at once
    assert sent_at(second) is not None
    assert api.get(f"/v1/jobs/{second}").json()["phase"] is None
    assert run_turn(second) == second


def test_a_job_past_the_time_limit_is_failed_by_its_worker(api, registered, monkeypatch):
    configure(monkeypatch, job_time_limit_s=0.000001)
    job_id = queued_job(api, registered)
    assert _claim_and_run(job_id) == "failed"
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert "time limit" in job["error"] and "NEPENTHE_JOB_TIME_LIMIT_S" in job["error"]
    events = api.get(f"/v1/jobs/{job_id}/events").json()
    assert events[-1]["reason"].startswith("time limit") and "worker" in events[-1]["reason"]
    audited = api.get("/v1/audit/events", params={"action": "job.failed"}).json()["items"]
    assert [e["job_id"] for e in audited] == [job_id]


def test_a_job_past_the_time_limit_is_failed_by_the_sweeper(api, registered, monkeypatch):
    configure(monkeypatch, job_time_limit_s=3600)
    job_id = queued_job(api, registered)
    lease = claim(job_id)
    assert lease is not None
    assert sweep_once()["timed_out"] == 0  # just started
    with session_scope() as session:  # as if its worker were busy in one long step
        started = utcnow() - timedelta(seconds=3601)
        session.execute(update(Job).where(Job.id == job_id).values(started_at=started))
    assert sweep_once()["timed_out"] == 1
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and "3600 s" in job["error"]
    events = api.get(f"/v1/jobs/{job_id}/events").json()
    assert "sweeper" in events[-1]["reason"]
    # Its worker's lease is void: it can record nothing when it wakes up.
    assert finish(job_id, JobStatus.succeeded, "late", lease=lease) is False
