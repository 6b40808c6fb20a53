"""Faults on real processes: a worker killed mid-job or asked to stop, Redis and PostgreSQL
stopped and started again, the API killed mid-upload, a full disk. Nothing is lost, nothing is
recorded twice, and the service recovers by itself."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from client.api import NepentheClient
from client.local import LocalService
from tests.conftest import ROOT
from tests.e2e.test_service import register, submit
from tests.helpers import safetensors_bytes
from tests.servers import PrivatePostgres, PrivateRedis

pytestmark = pytest.mark.e2e
both_backends = pytest.mark.parametrize("service_env", ["embedded", "production"], indirect=True)
# PostgreSQL, with a Redis of the test's own in place of the shared one.
on_production = pytest.mark.parametrize("service_env", ["production"], indirect=True)
# Short leases so that a lost worker is noticed within seconds.
FAST_SWEEP = {
    "NEPENTHE_HEARTBEAT_INTERVAL_S": "0.5",
    "NEPENTHE_LEASE_TIMEOUT_S": "4",
    "NEPENTHE_SWEEP_INTERVAL_S": "0.5",
    "NEPENTHE_SEND_GRACE_S": "0.5",
    "NEPENTHE_REQUEUE_AFTER_S": "2",
}
# Runs until it is stopped; small noise batches keep it under the default cost cap
# (NEPENTHE_QUOTA_MAX_JOB_SAMPLE_PASSES: 2 classes x 1,000,000 steps x 8 = 16M passes).
LONG_JOB = {"noise_steps": 1_000_000, "noise_batch": 8}


@contextmanager
def running(env: dict[str, str], logs: Path) -> Iterator[tuple[LocalService, NepentheClient]]:
    with (
        LocalService({**env, **FAST_SWEEP}, ROOT, logs) as service,
        closing(NepentheClient(service.url, service.admin_key)) as client,
    ):
        yield service, client


def wait_until(what: str, check: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def events(client: NepentheClient, job_id: str) -> list[tuple[str, str]]:
    return [(e["to_status"], e["reason"]) for e in client.job_events(job_id)]


def running_phase(
    client: NepentheClient, job_id: str, phase: str | None = None, attempt: int = 1
) -> bool:
    """The job's ``attempt``-th claim is running (in ``phase``). The attempt matters: a killed
    worker's job still reads running in its last phase until the sweeper re-queues it."""
    job = client.get_job(job_id)
    return (
        job["status"] == "running"
        and job["attempts"] == attempt
        and (phase is None or job["phase"] == phase)
    )


def versions(client: NepentheClient, model_id: str) -> list[int]:
    return [v["number"] for v in client.http.get(f"/v1/models/{model_id}/versions").json()]


@both_backends
def test_a_worker_killed_mid_job_is_detected_and_its_job_runs_once_elsewhere(service_env, tmp_path):
    with running(service_env, tmp_path / "logs") as (service, client):
        reg = register(client, tmp_path)
        # Noise long enough (seconds) to be caught at it, short enough to run twice.
        job_id = submit(client, reg, noise_steps=1000)["job"]["id"]
        wait_until("the job learns noise", lambda: running_phase(client, job_id, "noise"))
        assert service.stop_worker(signal.SIGKILL) == -signal.SIGKILL
        service.start_worker()
        job = client.wait(job_id, timeout=300)
        assert job["status"] == "succeeded", job["error"]
        assert job["attempts"] == 2
        history = events(client, job_id)
        assert [s for s, _ in history] == ["queued", "running", "queued", "running", "succeeded"]
        assert "worker lost" in history[2][1]
        assert versions(client, reg["model"]["id"]) == [1, 2]  # one result, not two
        assert job["output_version"]["produced_by_request_id"] == job["request_id"]


def test_a_job_whose_worker_is_lost_every_time_fails_with_its_reason(service_env, tmp_path):
    env = {**service_env, "NEPENTHE_MAX_ATTEMPTS": "2"}
    with running(env, tmp_path / "logs") as (service, client):
        reg = register(client, tmp_path)
        job_id = submit(client, reg, **LONG_JOB)["job"]["id"]
        for attempt in (1, 2):
            wait_until(
                f"attempt {attempt} learns noise",
                lambda n=attempt: running_phase(client, job_id, "noise", n),
            )
            service.stop_worker(signal.SIGKILL)
            service.start_worker()
        job = client.wait(job_id, timeout=120)
        assert job["status"] == "failed" and job["attempts"] == 2
        assert "lost on each of its 2 attempts" in job["error"]
        assert [s for s, _ in events(client, job_id)] == [
            "queued",
            "running",
            "queued",
            "running",
            "failed",
        ]
        assert versions(client, reg["model"]["id"]) == [1]


@both_backends
def test_a_worker_asked_to_stop_hands_its_job_back_and_the_next_one_takes_it(service_env, tmp_path):
    with running(service_env, tmp_path / "logs") as (service, client):
        reg = register(client, tmp_path)
        job_id = submit(client, reg, **LONG_JOB)["job"]["id"]
        wait_until("the job learns noise", lambda: running_phase(client, job_id, "noise"))
        assert service.stop_worker(signal.SIGTERM, timeout=30) == 0  # a warm, prompt shutdown
        job = client.get_job(job_id)
        assert job["status"] == "queued" and job["attempts"] == 0
        assert "handed back" in events(client, job_id)[-1][1]
        service.start_worker()
        wait_until("the next worker takes it", lambda: running_phase(client, job_id, "noise"))
        # Cancel works on a running job of this transport, and on a queued one.
        client.cancel_job(job_id)
        assert client.wait(job_id, timeout=60)["status"] == "canceled"
        service.stop_worker()
        queued = submit(client, reg)["job"]["id"]
        assert client.cancel_job(queued)["status"] == "canceled"
        assert versions(client, reg["model"]["id"]) == [1]


@on_production
def test_requests_arriving_while_redis_is_down_run_once_it_is_back(service_env, tmp_path):
    with PrivateRedis() as broker:
        env = {**service_env, "NEPENTHE_BROKER_URL": broker.url}
        with running(env, tmp_path / "logs") as (_, client):
            reg = register(client, tmp_path)
            broker.stop()
            started = time.monotonic()
            request = submit(client, reg)
            assert time.monotonic() - started < 10  # accepted without waiting for the broker
            job_id = request["job"]["id"]
            time.sleep(2)
            assert client.get_job(job_id)["status"] == "queued"
            assert client.get_request(request["id"])["id"] == request["id"]
            broker.start()  # an empty Redis: the message never reached it
            job = client.wait(job_id, timeout=180)
            assert job["status"] == "succeeded", job["error"]
            assert [s for s, _ in events(client, job_id)] == ["queued", "running", "succeeded"]


@on_production
def test_jobs_lost_with_a_restarted_redis_are_sent_again(service_env, tmp_path):
    with PrivateRedis() as broker:
        env = {**service_env, "NEPENTHE_BROKER_URL": broker.url}
        with running(env, tmp_path / "logs") as (service, client):
            reg = register(client, tmp_path)
            service.stop_worker()
            job_id = submit(client, reg)["job"]["id"]  # sent: it waits in Redis
            broker.stop()
            broker.start()  # no persistence: the message is gone
            service.start_worker()
            job = client.wait(job_id, timeout=180)
            assert job["status"] == "succeeded", job["error"]
            assert job["attempts"] == 1


@pytest.mark.postgres
def test_while_postgresql_restarts_the_api_answers_503_and_recovers_by_itself(
    service_env, tmp_path
):
    with PrivatePostgres() as database:
        env = {**service_env, "NEPENTHE_DATABASE_URL": database.url}
        with running(env, tmp_path / "logs") as (_, client):
            reg = register(client, tmp_path)
            database.stop()
            for response in (
                client.http.get("/healthz"),
                client.http.get(f"/v1/models/{reg['model']['id']}/versions"),
                client.http.post("/v1/deletion-requests", json={}),
            ):
                assert response.status_code == 503
                assert response.headers["content-type"] == "application/problem+json"
                assert response.json()["code"] == "database_unavailable"
                assert response.headers["retry-after"] == "5"
            database.start()
            wait_until("the API recovers", lambda: client.http.get("/healthz").status_code == 200)
            job = client.wait(submit(client, reg)["job"]["id"], timeout=300)
            assert job["status"] == "succeeded", job["error"]


def test_an_api_killed_mid_upload_leaves_no_partial_checkpoint(service_env, tmp_path):
    store = Path(service_env["NEPENTHE_STORE_DIR"])
    with running(service_env, tmp_path / "logs") as (service, client):
        reg = register(client, tmp_path)
        before = sorted(p for p in store.rglob("*") if p.is_file())
        body = safetensors_bytes()
        boundary = "nepenthe-boundary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="m.safetensors"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        total = len(head) + 10 * len(body)  # announced, never all sent
        with socket.create_connection(("127.0.0.1", service.port)) as conn:
            conn.sendall(
                f"POST /v1/models/{reg['model']['id']}/versions HTTP/1.1\r\n"
                f"Host: 127.0.0.1\r\nAuthorization: Bearer {service.admin_key}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {total}\r\n\r\n".encode()
                + head
                + body
            )
            time.sleep(1)
            service.stop_api(signal.SIGKILL)
        service.start_api()
        assert versions(client, reg["model"]["id"]) == [1]
        assert sorted(p for p in store.rglob("*") if p.is_file()) == before
        # The same upload, whole this time, is accepted.
        files = {"file": ("m.safetensors", body, "application/octet-stream")}
        response = client.http.post(f"/v1/models/{reg['model']['id']}/versions", files=files)
        assert response.status_code == 201


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem (tmpfs): writes past it fail with ENOSPC."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_while_saving_fails_the_job_cleanly(service_env, tmp_path, small_disk):
    env = {**service_env, "NEPENTHE_STORE_DIR": str(small_disk)}
    with running(env, tmp_path / "logs") as (_, client):
        reg = register(client, tmp_path)  # the original fits
        size = reg["version"]["size_bytes"]
        free = _free_bytes(small_disk)
        filler = small_disk / "filler"
        filler.write_bytes(b"\0" * max(free - size // 2, 0))  # the result will not
        kept = sorted(p.name for p in small_disk.rglob("*") if p.is_file())
        job = client.wait(submit(client, reg)["job"]["id"], timeout=300)
        assert job["status"] == "failed"
        assert "no space left on device" in job["error"] and "nothing was published" in job["error"]
        assert job["output_version"] is None
        assert sorted(p.name for p in small_disk.rglob("*") if p.is_file()) == kept
        assert versions(client, reg["model"]["id"]) == [1]
        filler.unlink()  # space again: the same request succeeds when submitted again
        assert client.wait(submit(client, reg)["job"]["id"], timeout=300)["status"] == "succeeded"


def _free_bytes(path: Path) -> int:
    import os

    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def test_an_upload_to_a_full_store_is_507_and_leaves_nothing(service_env, small_disk, monkeypatch):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.conftest import new_key, reset_caches, snapshot
    from tests.helpers import model_body

    monkeypatch.setenv("NEPENTHE_STORE_DIR", str(small_disk))
    reset_caches()
    with TestClient(create_app(), headers={"Authorization": f"Bearer {new_key('acme')}"}) as api:
        model = api.post("/v1/models", json=model_body()).json()
        (small_disk / "filler").write_bytes(b"\0" * (_free_bytes(small_disk) - 4096))
        before = snapshot(small_disk)
        files = {"file": ("m.safetensors", safetensors_bytes(), "application/octet-stream")}
        response = api.post(f"/v1/models/{model['id']}/versions", files=files)
        assert response.status_code == 507
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "insufficient_storage"
        assert snapshot(small_disk) == before  # no row, no partial file
