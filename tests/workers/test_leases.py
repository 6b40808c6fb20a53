"""Leases, the sweeper, hand-back and failure messages, on both databases, with the worker's
own functions (the real-process faults are in tests/e2e/test_faults.py)."""

from __future__ import annotations

import errno
import time

import pytest
import torch
from sqlalchemy import update

from app.db import session_scope
from app.jobs import outcome as job_outcome
from app.orm import Job, JobStatus, utcnow
from tests.api.conftest import BACKENDS
from tests.api.test_bad_input import submit
from unlearning.jobs import Outcome
from workers import lease as lease_module
from workers.failures import describe_failure
from workers.lease import HandBack, Heartbeat, JobLost
from workers.progress import ProgressReporter
from workers.sweeper import sweep_once
from workers.tasks import claim, finish, hand_back

both_databases = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)


def queued_job(api, registered) -> str:
    response = submit(api, registered)
    assert response.status_code == 202
    return str(response.json()["job"]["id"])


def silence(job_id: str, seconds: float) -> None:
    """The job's worker last wrote a heartbeat ``seconds`` ago (as if it was killed then)."""
    from datetime import timedelta

    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )


def statuses(api, job_id: str) -> list[str]:
    return [e["to_status"] for e in api.get(f"/v1/jobs/{job_id}/events").json()]


@both_databases
def test_a_silent_worker_loses_its_job_to_the_queue_then_fails_it_after_the_last_attempt(
    api, registered, monkeypatch
):
    monkeypatch.setenv("NEPENTHE_LEASE_TIMEOUT_S", "30")
    monkeypatch.setenv("NEPENTHE_MAX_ATTEMPTS", "2")
    from tests.conftest import reset_caches

    reset_caches()
    job_id = queued_job(api, registered)
    first = claim(job_id)
    assert first is not None
    assert sweep_once()["requeued"] == 0  # heartbeat fresh: nothing to do
    silence(job_id, 31)
    assert sweep_once()["requeued"] == 1
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "queued" and job["attempts"] == 1 and job["progress"] == 0.0
    # The presumed-lost worker wakes up: it can neither report nor record a result.
    with pytest.raises(JobLost):
        ProgressReporter(job_id, 0, heartbeat=Heartbeat(job_id, first, 60))("noise", 0.5)
    assert finish(job_id, JobStatus.succeeded, "late", lease=first) is False

    second = claim(job_id)
    assert second is not None and second != first
    assert finish(job_id, JobStatus.succeeded, "late", lease=first) is False
    silence(job_id, 31)
    assert sweep_once()["failed"] == 1
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["attempts"] == 2
    assert "lost on each of its 2 attempts" in job["error"]
    assert statuses(api, job_id) == ["queued", "running", "queued", "running", "failed"]
    assert claim(job_id) is None


@both_databases
def test_the_heartbeat_thread_keeps_the_lease_and_notices_when_it_is_taken(api, registered):
    job_id = queued_job(api, registered)
    lease = claim(job_id)
    assert lease is not None
    with Heartbeat(job_id, lease, interval_s=0.05) as beat:
        silence(job_id, 3600)
        time.sleep(0.5)
        with session_scope() as session:
            fresh = session.get(Job, job_id)
            assert fresh is not None and fresh.heartbeat_at is not None
            assert (utcnow() - fresh.heartbeat_at).total_seconds() < 5  # beat again
        beat.check()  # still ours
        with session_scope() as session:  # the sweeper took it
            session.execute(update(Job).where(Job.id == job_id).values(lease_id="someone-else"))
        deadline = time.monotonic() + 10
        while not beat.lost.is_set():
            assert time.monotonic() < deadline, "the heartbeat never noticed the lost lease"
            time.sleep(0.05)
        with pytest.raises(JobLost):
            beat.check()


@both_databases
def test_a_worker_shutting_down_hands_its_job_back_without_spending_an_attempt(
    api, registered, monkeypatch
):
    job_id = queued_job(api, registered)
    lease = claim(job_id)
    assert lease is not None
    report = ProgressReporter(job_id, 0, heartbeat=Heartbeat(job_id, lease, 60))
    report("noise", 0.1)
    monkeypatch.setattr(lease_module, "SHUTTING_DOWN", _set_event())
    with pytest.raises(HandBack):
        report("noise", 0.2)
    assert hand_back(job_id, lease) is True
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "queued" and job["attempts"] == 0 and job["phase"] is None
    assert hand_back(job_id, lease) is False  # once only
    assert claim(job_id) is not None  # another worker takes it up


def _set_event():
    import threading

    event = threading.Event()
    event.set()
    return event


@both_databases
def test_queued_jobs_whose_send_failed_are_sent_by_the_sweeper(api, registered, monkeypatch):
    from tests.conftest import reset_caches

    job_id = queued_job(api, registered)
    with session_scope() as session:  # as if the broker had been down at submit
        session.execute(update(Job).where(Job.id == job_id).values(sent_at=None))
    monkeypatch.setenv("NEPENTHE_SEND_GRACE_S", "0")
    reset_caches()
    assert sweep_once()["sent"] == 1
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.sent_at is not None
    assert sweep_once()["sent"] == 0  # sent now: not again before requeue_after_s


@both_databases
def test_messages_lost_by_the_broker_are_sent_again_and_waiting_ones_are_not(
    api, registered, monkeypatch
):
    from app.config import get_settings
    from app.queue import producer, waiting_messages
    from tests.conftest import reset_caches

    monkeypatch.setenv("NEPENTHE_REQUEUE_AFTER_S", "0")
    reset_caches()
    first, second = queued_job(api, registered), queued_job(api, registered)
    assert waiting_messages() == 2
    assert sweep_once()["sent"] == 0  # both messages wait in the broker: no duplicate
    with producer().connection_for_write() as conn:  # the broker restarts empty
        conn.default_channel.queue_purge(get_settings().task_queue)
    assert waiting_messages() == 0
    assert sweep_once()["sent"] == 2
    assert waiting_messages() == 2
    assert sweep_once()["sent"] == 0
    with session_scope() as session:  # both recorded as sent again
        for job_id in (first, second):
            job = session.get(Job, job_id)
            assert job is not None and job.sent_at is not None


@both_databases
def test_a_lost_job_the_client_asked_to_cancel_ends_canceled(api, registered, monkeypatch):
    from tests.conftest import reset_caches

    monkeypatch.setenv("NEPENTHE_LEASE_TIMEOUT_S", "30")
    reset_caches()
    job_id = queued_job(api, registered)
    assert claim(job_id) is not None
    assert api.post(f"/v1/jobs/{job_id}/cancel").json()["cancel_requested"] is True
    silence(job_id, 31)
    assert sweep_once()["canceled"] == 1
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "canceled"


@both_databases
def test_a_handed_back_job_the_client_asked_to_cancel_ends_canceled(api, registered):
    job_id = queued_job(api, registered)
    lease = claim(job_id)
    assert lease is not None
    api.post(f"/v1/jobs/{job_id}/cancel")
    assert hand_back(job_id, lease) is True
    assert statuses(api, job_id) == ["queued", "running", "canceled"]


@both_databases
def test_a_stuck_job_stops_beating(api, registered):
    job_id = queued_job(api, registered)
    lease = claim(job_id)
    assert lease is not None
    silence(job_id, 3600)
    with Heartbeat(job_id, lease, interval_s=0.05, stall_timeout_s=0.01):
        time.sleep(0.5)  # the job reaches no check: no beat is written
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.heartbeat_at is not None
        assert (utcnow() - job.heartbeat_at).total_seconds() > 3000


def test_out_of_memory_names_the_batch_size_to_lower():
    unsir = {"noise_batch": 256, "impair_batch_size": 512, "repair_batch_size": 256}
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    reason, error = describe_failure(oom, "impair", "unsir", unsir)
    assert reason == "out of memory"
    assert "params.impair_batch_size (now 512)" in error and "during impair (unsir)" in error
    # A real CPU allocation failure reads the same.
    try:
        torch.empty(1 << 60, dtype=torch.uint8)
    except RuntimeError as exc:
        _, error = describe_failure(exc, "repair", "unsir", unsir)
    assert "params.repair_batch_size (now 256)" in error
    # Only parameters the method has: finetune's one batch size for any of its phases.
    _, error = describe_failure(oom, "finetune", "finetune", {"epochs": 1, "batch_size": 64})
    assert "params.batch_size (now 64)" in error
    # Evaluation runs at a batch no parameter sets: none is named.
    _, error = describe_failure(oom, "evaluate", "unsir", unsir)
    assert "params." not in error and "more memory" in error
    _, error = describe_failure(oom, "reference", "unsir", unsir)
    assert "reference.params.batch_size" in error


def test_a_full_disk_is_told_apart_by_where_it_happened():
    full = OSError(errno.ENOSPC, "No space left on device", "/tmp/x")
    reason, error = describe_failure(full, "save", "unsir", {})
    assert reason == "no space left to save the result" and "nothing was published" in error
    reason, error = describe_failure(full, "load", "unsir", {})
    assert reason == "no space left on device" and "/tmp/x" in error and "during load" in error


@both_databases
def test_a_full_disk_while_saving_fails_the_job_and_leaves_no_file(
    api, registered, store, monkeypatch
):
    from app import storage

    job_id = queued_job(api, registered)
    lease = claim(job_id)
    ctx = job_outcome.load_context(job_id, lease)
    before = sorted(p.name for p in store.rglob("*") if p.is_file())
    real_put = storage.LocalArtifactStore.put_bytes
    calls = []

    def put_then_disk_full(self, data, suffix):  # the checkpoint fits, the grid does not
        calls.append(suffix)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_put(self, data, suffix)

    monkeypatch.setattr(storage.LocalArtifactStore, "put_bytes", put_then_disk_full)
    from tests.helpers import trained_state

    metrics = {"phase_seconds": {"noise": 1.0}, "before": {}, "after": {}}
    outcome = Outcome(metrics, dict(trained_state()), [], {"grid.png": ("image/png", b"png bytes")})
    with pytest.raises(OSError, match="No space left"):
        job_outcome.store_outcome(ctx, outcome)
    assert sorted(p.name for p in store.rglob("*") if p.is_file()) == before
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "running"  # the task fails it


@both_databases
def test_unsent_jobs_are_taken_for_resending_once(api, registered):
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
