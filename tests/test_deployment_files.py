"""docker-compose.yml and the Dockerfile name real things (no Docker engine runs in CI)."""

from __future__ import annotations

import importlib

import yaml

from tests.conftest import ROOT


def test_compose_file_parses_and_has_every_service():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "api", "worker", "worker-gpu"} <= set(services)
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    for name in ("api", "worker", "worker-gpu"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
        env = services[name]["environment"]
        assert env["NEPENTHE_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["NEPENTHE_BROKER_URL"].startswith("redis://")
    assert services["worker-gpu"]["environment"]["NEPENTHE_DEVICE"] == "cuda"
    # Production mode refuses to start without a real secret and a signing key: both are passed.
    for name in ("api", "worker", "worker-gpu", "migrate"):
        env = services[name]["environment"]
        assert env["NEPENTHE_ENV"] == "production"
        assert env["NEPENTHE_SECRET_KEY"].startswith("${NEPENTHE_SECRET_KEY:?")
        assert env["NEPENTHE_SIGNING_KEY_FILE"] == "/run/secrets/signing_key"
        assert services[name]["secrets"] == ["signing_key"]
    assert compose["secrets"]["signing_key"]["file"] == "./secrets/signing-key.pem"
    # Ready means the database and the broker answer; workers get time to hand their job back.
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    for name in ("worker", "worker-gpu"):
        assert services[name]["stop_grace_period"] == "60s"
        assert services[name]["environment"]["NEPENTHE_LOG_FORMAT"] == "json"


def test_commands_name_importable_modules():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "app.main:app" in compose["services"]["api"]["command"]
    assert "workers.celery_app" in compose["services"]["worker"]["command"]
    assert importlib.import_module("app.main").app is not None
    assert importlib.import_module("workers.celery_app").app.main == "nepenthe-worker"
    dockerfile = (ROOT / "Dockerfile").read_text()
    for folder in ("app", "workers", "unlearning", "client", "migrations"):
        assert f"COPY {folder} ./{folder}" in dockerfile
