"""The worker's side of the job table, on both databases: claim, progress, cancel, finish."""

from __future__ import annotations

import pytest

from app.orm import JobStatus
from tests.api.conftest import BACKENDS
from tests.api.test_bad_input import submit
from workers.progress import JobCanceled, ProgressReporter
from workers.tasks import claim, finish

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)


def queued_job(api, registered) -> str:
    response = submit(api, registered)
    assert response.status_code == 202
    return str(response.json()["job"]["id"])


def test_only_the_first_claim_wins(api, registered):
    job_id = queued_job(api, registered)
    lease = claim(job_id)
    assert lease is not None
    assert claim(job_id) is None  # a duplicate delivery
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "running"
    assert job["attempts"] == 1
    assert job["started_at"] is not None
    assert claim("no-such-job") is None


def test_a_canceled_job_cannot_be_claimed(api, registered):
    job_id = queued_job(api, registered)
    assert api.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "canceled"
    assert claim(job_id) is None


def test_progress_is_throttled_but_every_phase_change_is_written(api, registered):
    job_id = queued_job(api, registered)
    claim(job_id)
    report = ProgressReporter(job_id, interval_s=3600)
    report.set_plan([("noise", 1.0), ("impair", 3.0)])
    report("noise", 0.5)
    report("noise", 0.9)  # inside the interval: not written
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert (job["phase"], job["progress"]) == ("noise", pytest.approx(0.125))
    report("impair", 0.0)  # a new phase is always written
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert (job["phase"], job["progress"]) == ("impair", pytest.approx(0.25))


def test_a_cancel_request_stops_the_running_job_at_its_next_report(api, registered):
    job_id = queued_job(api, registered)
    claim(job_id)
    report = ProgressReporter(job_id, interval_s=0)
    report("noise", 0.1)
    assert api.post(f"/v1/jobs/{job_id}/cancel").json()["cancel_requested"] is True
    with pytest.raises(JobCanceled):
        report("noise", 0.2)
    finish(job_id, JobStatus.canceled, "canceled by the test")
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "canceled"
    assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 409


def test_artifacts_of_a_job_that_ended_elsewhere_leave_nothing_in_the_store(api, registered, store):
    """A rejected result whose job was canceled meanwhile records nothing, and its grid (images
    of the forget classes) does not stay behind in the store."""
    from app.jobs import outcome as job_outcome
    from unlearning.jobs import Outcome

    job_id = queued_job(api, registered)
    claim(job_id)
    ctx = job_outcome.load_context(job_id)
    finish(job_id, JobStatus.canceled, reason="canceled meanwhile")
    metrics = {
        "task": "image_to_image",
        "phase_seconds": {"i2i": 1.0},
        "before": {"retain": {"psnr": 20.0}, "forget": {"psnr": 20.0}},
        "after": {"retain": {"psnr": 19.0}, "forget": {"psnr": 19.9}},
        "weights": {"frozen_unchanged": True},
        "acceptance": {"passed": False},
    }
    failures = [{"check": "min_forget_psnr_drop", "measured": 0.1, "threshold": 1.5}]
    grid = b"\x89PNG not really, but bytes no other job stores"
    outcome = Outcome(metrics, None, failures, {"completions.png": ("image/png", grid)})
    assert job_outcome.store_outcome(ctx, outcome) is False
    assert list(store.rglob("*.png")) == []
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "canceled" and job["artifacts"] == []
