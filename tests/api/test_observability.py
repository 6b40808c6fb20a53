"""Probes, Prometheus metrics and structured logs, on both backends where a database is read."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.observability import configure_logging, log_context
from app.observability.logs import StderrHandler
from tests.conftest import BACKENDS, reset_caches

PROBLEM = "application/problem+json"
ANONYMOUS = {"Authorization": ""}
# A port nothing listens on: connecting is refused at once, no timeout to wait for.
DOWN_REDIS = "redis://127.0.0.1:1/0"
DOWN_DATABASE = {
    "embedded": "sqlite:///{tmp}/a-file/nepenthe.db",  # a folder that cannot be created
    "production": "postgresql+psycopg://postgres@127.0.0.1:1/test",
}

backends = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)
embedded = pytest.mark.parametrize("service_env", ["embedded"], indirect=True)


def samples(api: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """One scrape, as {(sample name, labels): value}."""
    response = api.get("/metrics", headers=ANONYMOUS)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped[(name, frozenset(labels.items()))]


def submit(api: TestClient, registered: dict) -> str:
    body = {
        "model_version_id": registered["version"]["id"],
        "dataset_id": registered["dataset"]["id"],
        "forget_classes": [3],
    }
    response = api.post(
        "/v1/deletion-requests", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["job"]["id"])


def drive(job_id: str, *path: str, ran_s: float | None = None) -> None:
    """Move a job along ``path`` as a worker would; ``ran_s``: its finished_at - started_at."""
    from app.db import session_scope
    from app.jobs.states import transition
    from app.orm import Job, JobStatus, utcnow

    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        for step in map(JobStatus, path):
            values = {}
            if step is JobStatus.running and ran_s is not None:
                values["started_at"] = utcnow() - timedelta(seconds=ran_s)
            assert transition(session, job, step, reason="driven by the test", values=values)


@backends
def test_probes_answer_without_a_key(api):
    assert api.get("/livez", headers=ANONYMOUS).json() == {"status": "alive"}
    assert api.get("/healthz", headers=ANONYMOUS).json() == {"status": "ok"}
    ready = api.get("/readyz", headers=ANONYMOUS)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


@backends
def test_readyz_reports_an_unreachable_broker_but_stays_in_rotation(api, monkeypatch):
    """Requests are still accepted and kept while the broker is down: degraded, not unready."""
    monkeypatch.setenv("NEPENTHE_BROKER_URL", DOWN_REDIS)
    reset_caches()
    response = api.get("/readyz", headers=ANONYMOUS)
    assert response.status_code == 200
    assert response.json() == {
        "status": "degraded",
        "checks": {"database": "ok", "broker": "failed"},
    }
    assert api.get("/livez", headers=ANONYMOUS).status_code == 200


@embedded
def test_readyz_fails_when_the_broker_folder_cannot_be_written(api, monkeypatch, tmp_path):
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    monkeypatch.setenv("NEPENTHE_BROKER_DIR", str(not_a_folder / "broker"))
    reset_caches()
    assert api.get("/readyz").json()["checks"]["broker"] == "failed"


@backends
def test_with_the_database_down_readyz_fails_and_a_scrape_reports_it(
    api, monkeypatch, tmp_path, request
):
    backend = request.node.callspec.params["service_env"]
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("NEPENTHE_DATABASE_URL", DOWN_DATABASE[backend].format(tmp=tmp_path))
    reset_caches()
    response = api.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == "not_ready"
    assert response.json()["checks"]["database"] == "failed"
    scraped = samples(api)
    assert value(scraped, "nepenthe_database_up") == 0
    assert not any(name.startswith("nepenthe_jobs_") for name, _ in scraped)


@backends
def test_request_counters_are_labelled_by_route_template(api, registered):
    job_id = submit(api, registered)
    for _ in range(2):
        assert api.get(f"/v1/jobs/{job_id}").status_code == 200
    assert api.get("/v1/jobs/no-such-job").status_code == 404
    assert api.get(f"/no/such/path/{job_id}").status_code == 404
    scraped = samples(api)
    route = "/v1/jobs/{job_id}"
    assert (
        value(scraped, "nepenthe_http_requests_total", method="GET", route=route, status="200") == 2
    )
    assert (
        value(scraped, "nepenthe_http_requests_total", method="GET", route=route, status="404") == 1
    )
    assert (
        value(
            scraped, "nepenthe_http_requests_total", method="GET", route="unmatched", status="404"
        )
        == 1
    )
    assert (
        value(scraped, "nepenthe_http_request_duration_seconds_count", method="GET", route=route)
        == 3
    )
    assert not any(job_id in v for _, labels in scraped for _, v in labels)


@backends
def test_job_figures_come_from_the_database(api, registered):
    jobs = [submit(api, registered) for _ in range(5)]
    scraped = samples(api)
    assert value(scraped, "nepenthe_database_up") == 1
    assert value(scraped, "nepenthe_jobs_queued") == 5
    assert value(scraped, "nepenthe_jobs_running") == 0

    drive(jobs[0], "running", "succeeded", ran_s=90)
    drive(jobs[1], "running", "failed", ran_s=5000)
    drive(jobs[2], "canceled")  # never started: an outcome, but no duration
    drive(jobs[3], "running")
    scraped = samples(api)
    assert value(scraped, "nepenthe_jobs_queued") == 1
    assert value(scraped, "nepenthe_jobs_running") == 1
    finished = {
        s: value(scraped, "nepenthe_jobs_finished_total", status=s)
        for s in ("succeeded", "rejected", "failed", "canceled")
    }
    assert finished == {"succeeded": 1, "rejected": 0, "failed": 1, "canceled": 1}

    def bucket(status: str, le: str) -> float:
        return value(scraped, "nepenthe_job_duration_seconds_bucket", status=status, le=le)

    assert (bucket("succeeded", "60.0"), bucket("succeeded", "120.0")) == (0, 1)
    assert (bucket("failed", "3600.0"), bucket("failed", "7200.0")) == (0, 1)
    assert bucket("failed", "+Inf") == 1
    assert value(scraped, "nepenthe_job_duration_seconds_count", status="canceled") == 0
    total = value(scraped, "nepenthe_job_duration_seconds_sum", status="succeeded")
    assert total == pytest.approx(90, abs=1)


@embedded
def test_metrics_can_be_turned_off(service_env, monkeypatch):
    from app.main import create_app

    monkeypatch.setenv("NEPENTHE_METRICS_ENABLED", "false")
    reset_caches()
    with TestClient(create_app()) as client:
        assert client.get("/metrics").status_code == 404
        assert client.get("/livez").status_code == 200


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Put our root handler and level back: configure_logging changes them for the process.
    (Only ours: pytest adds and removes its own handlers around each test phase.)"""
    root = logging.getLogger()
    saved = [h for h in root.handlers if isinstance(h, StderrHandler)]
    level = root.level
    yield
    for handler in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(handler)
    for handler in saved:
        root.addHandler(handler)
    root.setLevel(level)


def json_lines(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


@embedded
def test_json_log_lines_carry_the_request_id(service_env, monkeypatch, capsys, root_logging):
    from app.main import create_app

    monkeypatch.setenv("NEPENTHE_LOG_FORMAT", "json")
    reset_caches()
    app = create_app()

    @app.get("/test-log")
    def log_something() -> dict[str, str]:
        logging.getLogger("tests.observability").info("served %s", "it")
        return {}

    @app.get("/test-crash")
    def crash() -> None:
        raise RuntimeError("boom")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/test-log", headers={"X-Request-ID": "req-abc"})
        assert response.headers["X-Request-ID"] == "req-abc"
        client.get("/test-log")  # a second request: its own generated id
        assert client.get("/test-crash", headers={"X-Request-ID": "req-crash"}).status_code == 500
    lines = json_lines(capsys.readouterr().err)
    first, second = [e for e in lines if e["message"] == "served it"]
    assert first["request_id"] == "req-abc"
    assert second["request_id"] not in ("", "req-abc")
    assert (first["logger"], first["level"]) == ("tests.observability", "INFO")
    assert first["time"].endswith("+00:00")
    # The unexpected-error handler runs outside the middleware; its line carries the id too.
    (crashed,) = [e for e in lines if e.get("request_id") == "req-crash"]
    assert crashed["level"] == "ERROR" and "RuntimeError: boom" in crashed["exc_info"]


def test_log_context_tags_records_inside_it_only(capsys, root_logging):
    configure_logging(Settings(log_format="json", log_level="DEBUG"))
    log = logging.getLogger("tests.observability")
    with log_context(job_id="job-1"), log_context(request_id="req-1", job_id=None):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("inside")
    log.debug("outside")
    inside, outside = json_lines(capsys.readouterr().err)[-2:]
    assert (inside["job_id"], inside["request_id"], inside["level"]) == ("job-1", "req-1", "ERROR")
    assert "RuntimeError: boom" in inside["exc_info"]
    assert "job_id" not in outside and "request_id" not in outside
    with pytest.raises(ValueError, match="message"), log_context(message="x"):
        pass


def test_text_lines_append_the_ids_and_one_handler_is_kept(capsys, root_logging):
    for _ in range(2):  # as every create_app does
        configure_logging(Settings(log_format="text"))
    with log_context(job_id="job-2"):
        logging.getLogger("tests.observability").warning("hello")
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [lines[0]]
    assert lines[0].endswith(" WARNING tests.observability hello [job_id=job-2]")


def test_json_logs_take_in_uvicorn_s_own_loggers(monkeypatch):
    import logging

    from app.config import Settings
    from app.observability import configure_logging

    uvicorn_access = logging.getLogger("uvicorn.access")
    monkeypatch.setattr(uvicorn_access, "propagate", False)
    monkeypatch.setattr(uvicorn_access, "handlers", [logging.StreamHandler()])
    configure_logging(Settings(log_format="json"))
    assert uvicorn_access.propagate is True and uvicorn_access.handlers == []
