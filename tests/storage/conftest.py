"""A real S3-compatible server (moto_server) on loopback, one fresh bucket per test."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import BotoCoreError

from app.config import Settings
from client.local import free_port
from tests.conftest import reset_caches

# moto accepts any credentials; explicit ones keep boto3 away from this machine's ~/.aws.
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
MOTO_SERVER = Path(sys.executable).with_name("moto_server")


def s3_client(endpoint: str) -> Any:
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", **CREDENTIALS
    )


def wait_until_up(endpoint: str, server: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    client = s3_client(endpoint)
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"moto_server exited with status {server.returncode}")
        try:
            client.list_buckets()
            return
        except BotoCoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a moto_server process that lives as long as the test session."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    cmd = [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(endpoint, server)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    """A plain boto3 client, to look at and tamper with the bucket behind the store's back."""
    return s3_client(s3_endpoint)


@pytest.fixture
def s3_env(s3: Any, s3_endpoint: str, tmp_path: Path) -> dict[str, str]:
    """NEPENTHE_* variables selecting the S3 store on a new, empty bucket."""
    bucket = f"nepenthe-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    return {
        "NEPENTHE_STORE_BACKEND": "s3",
        "NEPENTHE_S3_ENDPOINT_URL": s3_endpoint,
        "NEPENTHE_S3_BUCKET": bucket,
        "NEPENTHE_S3_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
        "NEPENTHE_S3_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
        "NEPENTHE_STORE_CACHE_DIR": str(tmp_path / "store-cache"),
    }


def settings_from(env: dict[str, str], **overrides: Any) -> Settings:
    """Settings from ``env`` alone (not the process environment), as a fresh process reads them."""
    fields = {k.removeprefix("NEPENTHE_").lower(): v for k, v in env.items()}
    return Settings(_env_file=None, **{**fields, **overrides})


@pytest.fixture
def s3_settings(s3_env: dict[str, str]) -> Settings:
    return settings_from(s3_env)


@pytest.fixture
def service_env(
    service_env: dict[str, str], s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """tests/conftest.py's service settings (embedded backend), with the S3 store: every service
    this folder's tests start, in-process or as real processes, keeps its objects in the bucket."""
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    reset_caches()
    return {**service_env, **s3_env}
