"""A real API process answers 401 before reading a body from a client without a valid key, and
413 as soon as a body passes its limit, while the client is still sending: nothing is spooled
or held in memory first. Raw sockets, so that the test sees when the server answers."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from client.local import LocalService

ROOT = Path(__file__).resolve().parents[2]
UPLOAD_LIMIT = 1024 * 1024
BODY_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    tmp = tmp_path_factory.mktemp("limits")
    env = {
        "NEPENTHE_DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite'}",
        "NEPENTHE_STORE_DIR": str(tmp / "store"),
        "NEPENTHE_BROKER_URL": "filesystem://",
        "NEPENTHE_BROKER_DIR": str(tmp / "broker"),
        "NEPENTHE_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        "NEPENTHE_MAX_BODY_BYTES": str(BODY_LIMIT),
    }
    with LocalService(env, ROOT, tmp / "logs") as running:
        yield running


def _open(service: LocalService) -> socket.socket:
    parts = urlsplit(service.url)
    conn = socket.create_connection((parts.hostname, parts.port), timeout=10)
    return conn


def _status(conn: socket.socket) -> tuple[int, bytes]:
    """The status code and what came with it, read until the server closes or 2 s pass."""
    data = b""
    conn.settimeout(2)
    try:
        while chunk := conn.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data.split(b" ", 2)[1]), data


def _headers(path: str, length: int | None, key: str | None, content_type: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}"]
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_client_without_a_key_hears_401_before_sending_its_upload(service):
    """A 300 MB upload is announced, nothing of it sent: the answer comes at once."""
    conn = _open(service)
    conn.sendall(_headers("/v1/models/m/versions", 300 * 1024**2, None, "multipart/form-data; b=x"))
    started = time.monotonic()
    status, body = _status(conn)
    assert status == 401 and b'"code":"unauthenticated"' in body.replace(b" ", b"")
    assert time.monotonic() - started < 2.5
    conn.close()

    conn = _open(service)
    conn.sendall(
        _headers("/v1/deletion-requests", 100 * 1024**2, "nep_bad_key", "application/json")
    )
    status, body = _status(conn)
    assert status == 401 and b"invalid_api_key" in body
    conn.close()


def test_a_declared_body_over_its_limit_is_refused_before_it_is_read(service):
    conn = _open(service)
    conn.sendall(
        _headers(
            "/v1/models/m/versions", 2 * UPLOAD_LIMIT, service.admin_key, "multipart/form-data"
        )
    )
    status, body = _status(conn)
    assert status == 413 and b"payload_too_large" in body
    conn.close()
    # A JSON body is held to the small limit, whatever the upload limit.
    conn = _open(service)
    conn.sendall(
        _headers("/v1/deletion-requests", BODY_LIMIT + 1, service.admin_key, "application/json")
    )
    status, _ = _status(conn)
    assert status == 413
    conn.close()


def test_a_streamed_body_is_cut_off_at_its_limit_while_the_client_still_sends(service):
    """No Content-Length: the body is counted as it arrives, and the answer comes once the
    limit is passed, long before the 100 chunks of the announced document are sent."""
    conn = _open(service)
    conn.sendall(_headers("/v1/deletion-requests", None, service.admin_key, "application/json"))
    chunk = b"[" + b"1," * (16 * 1024)
    answered = None
    for sent in range(100):
        try:
            conn.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            answered = sent
            break
        conn.settimeout(0.05)
        try:
            peek = conn.recv(65536, socket.MSG_PEEK)
        except TimeoutError:
            continue
        if peek:
            answered = sent
            break
    assert answered is not None and answered < 20  # 64 KiB is about 2 chunks
    status, body = _status(conn)
    assert status == 413 and b"payload_too_large" in body
    conn.close()


def test_bodies_within_the_limits_are_served_as_before(service):
    from client.api import NepentheClient

    client = NepentheClient(service.url, service.admin_key)
    dataset = client.register_dataset("digits", "sklearn_digits")
    assert dataset["name"] == "digits"
    client.close()
