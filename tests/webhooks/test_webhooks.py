"""Signed webhooks: the API (both backends), the delivery task against a real HTTP receiver, and
the whole path end to end (API + worker processes, a deletion job, retries, signatures)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from app.webhooks import signature
from client.api import NepentheClient
from client.local import LocalService, free_port
from tests.conftest import BACKENDS, ROOT, new_key
from tests.helpers import ARCH, CLASS_NAMES, model_body
from unlearning import architectures

both_backends = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)


# --- a real HTTP receiver -------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


class Receiver:
    """An HTTP server on 127.0.0.1 in a thread that records every POST and answers 500 to the
    first ``fail_first`` attempts of each delivery (by Nepenthe-Webhook-Id; counting per
    delivery keeps the expected attempts exact when retries of several events interleave)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.received: list[Received] = []
        self.tries: Counter[str] = Counter()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                delivery_id = self.headers.get(signature.ID_HEADER, "")
                with receiver.lock:
                    receiver.tries[delivery_id] += 1
                    code = 500 if receiver.tries[delivery_id] <= receiver.fail_first else 200
                    receiver.received.append(Received(dict(self.headers.items()), body, code))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/nepenthe"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def accepted(self) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.answered == 200]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def flaky_receiver() -> Iterator[Receiver]:
    with Receiver(fail_first=2) as running:
        yield running


def untrained_safetensors() -> bytes:
    torch.manual_seed(0)
    model = architectures.build_classifier("tiny_cnn", 10, {"in_channels": 1})
    return bytes(safetensors.torch.save(model.state_dict()))


@pytest.fixture
def registered(api: Any) -> dict[str, Any]:
    """As tests/conftest.py's, but untrained weights: no job runs here, so no training wait."""
    model = api.post("/v1/models", json=model_body()).json()
    files = {"file": ("m.safetensors", untrained_safetensors(), "application/octet-stream")}
    version = api.post(f"/v1/models/{model['id']}/versions", files=files).json()
    dataset = api.post("/v1/datasets", json={"name": "digits", "kind": "sklearn_digits"}).json()
    return {"model": model, "version": version, "dataset": dataset}


def create_hook(api: Any, url: str) -> dict[str, Any]:
    response = api.post("/v1/webhooks", json={"url": url})
    assert response.status_code == 201, response.text
    return dict(response.json())


def submit(api: Any, registered: dict[str, Any], **extra: Any) -> dict[str, Any]:
    body = {
        "model_version_id": registered["version"]["id"],
        "dataset_id": registered["dataset"]["id"],
        "forget_classes": [3],
        **extra,
    }
    response = api.post("/v1/deletion-requests", json=body)
    assert response.status_code == 202, response.text
    return dict(response.json())


def actions(api: Any, action: str) -> list[dict[str, Any]]:
    return list(api.get("/v1/audit/events", params={"action": action}).json()["items"])


# --- the API, on both backends --------------------------------------------------------------


@both_backends
def test_create_list_and_disable(api):
    created = create_hook(api, "https://hooks.example.com/nepenthe?tenant=1")
    assert created["secret"].startswith("whsec_") and len(created["secret"]) == 6 + 43
    assert created["url"] == "https://hooks.example.com/nepenthe?tenant=1"
    assert created["disabled_at"] is None and created["created_at"]
    second = create_hook(api, "http://127.0.0.1:9/other")
    assert second["secret"] != created["secret"]

    listed = api.get("/v1/webhooks").json()
    assert [h["id"] for h in listed] == [created["id"], second["id"]]
    assert all("secret" not in h for h in listed)  # shown once, at creation only
    assert created["secret"] not in api.get("/v1/webhooks").text
    one = api.get(f"/v1/webhooks/{created['id']}")
    assert one.json() == {k: v for k, v in created.items() if k != "secret"}
    assert (
        api.post("/v1/webhooks", json={"url": "https://b.example.com"})
        .headers["Location"]
        .startswith("/v1/webhooks/")
    )

    assert api.delete(f"/v1/webhooks/{created['id']}").status_code == 204
    assert api.delete(f"/v1/webhooks/{created['id']}").status_code == 204  # idempotent
    listed = {h["id"]: h for h in api.get("/v1/webhooks").json()}
    assert listed[created["id"]]["disabled_at"] is not None
    assert listed[second["id"]]["disabled_at"] is None
    assert api.get(f"/v1/webhooks/{created['id']}").json()["disabled_at"] is not None

    made = actions(api, "webhook.created")
    assert [e["details"]["webhook_id"] for e in made][:2] == [created["id"], second["id"]]
    disabled = actions(api, "webhook.disabled")
    assert [e["details"]["webhook_id"] for e in disabled] == [created["id"]]  # once
    assert created["secret"] not in json.dumps(made)


@both_backends
def test_webhooks_need_the_admin_scope(api):
    hook = create_hook(api, "https://hooks.example.com/a")
    submitter = {"Authorization": f"Bearer {new_key('acme', 'submit')}"}
    for method, path in [
        ("POST", "/v1/webhooks"),
        ("GET", "/v1/webhooks"),
        ("DELETE", f"/v1/webhooks/{hook['id']}"),
        ("GET", f"/v1/webhooks/{hook['id']}"),
        ("GET", f"/v1/webhooks/{hook['id']}/deliveries"),
    ]:
        body = {"url": "https://x.example.com"} if method == "POST" else None
        response = api.request(method, path, json=body, headers=submitter)
        assert response.status_code == 403, (method, path)
        assert response.json()["code"] == "insufficient_scope"
    assert api.get("/v1/webhooks").json()[0]["disabled_at"] is None
    assert api.get("/v1/webhooks", headers={"Authorization": "Bearer nope"}).status_code == 401


@both_backends
def test_another_organisations_webhook_is_not_found(api):
    hook = create_hook(api, "https://hooks.example.com/a")
    other = {"Authorization": f"Bearer {new_key('other')}"}
    assert api.get("/v1/webhooks", headers=other).json() == []
    for method, path in [
        ("DELETE", f"/v1/webhooks/{hook['id']}"),
        ("GET", f"/v1/webhooks/{hook['id']}"),
        ("GET", f"/v1/webhooks/{hook['id']}/deliveries"),
        ("GET", "/v1/webhooks/no-such-webhook/deliveries"),
    ]:
        response = api.request(method, path, headers=other)
        assert response.status_code == 404, (method, path)
        assert response.json()["code"] == "webhook_not_found"
    assert api.get("/v1/webhooks").json()[0]["disabled_at"] is None


@both_backends
@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.com/x",
        "javascript:alert(1)",
        "hooks.example.com/x",
        "http://",
        "https:///path-only",
        "http://exa mple.com/",
        "http://example.com:99999/",
        "",
        "https://example.com/" + "a" * 2000,
        "http://example.com/\nInjected: 1",
    ],
)
def test_a_bad_url_is_refused(api, url):
    response = api.post("/v1/webhooks", json={"url": url})
    assert response.status_code == 422, url
    assert response.json()["code"] == "validation_error"
    assert api.get("/v1/webhooks").json() == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.7/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        # IPv6 forms that embed an IPv4 address: IPv4-compatible, NAT64, 6to4, IPv4-mapped.
        "http://[::127.0.0.1]/hook",
        "http://[64:ff9b::7f00:1]/hook",
        "http://[2002:7f00:1::]/hook",
        "http://[::ffff:10.0.0.1]/hook",
    ],
)
def test_internal_addresses_are_refused_unless_allowed(api, monkeypatch, url):
    from tests.conftest import reset_caches

    monkeypatch.setenv("NEPENTHE_WEBHOOK_ALLOW_PRIVATE", "false")
    reset_caches()
    response = api.post("/v1/webhooks", json={"url": url})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "webhook_url_refused"
    assert api.get("/v1/webhooks").json() == []
    monkeypatch.setenv("NEPENTHE_WEBHOOK_ALLOW_PRIVATE", "true")
    reset_caches()
    assert api.post("/v1/webhooks", json={"url": url}).status_code == 201


@both_backends
def test_unknown_fields_are_refused(api):
    response = api.post("/v1/webhooks", json={"url": "https://a.example.com", "secret": "mine"})
    assert response.status_code == 422
    assert api.get("/v1/webhooks").json() == []


@both_backends
def test_a_state_change_writes_one_delivery_per_live_webhook(api, registered):
    live = create_hook(api, "https://hooks.example.com/live")
    gone = create_hook(api, "https://hooks.example.com/gone")
    api.delete(f"/v1/webhooks/{gone['id']}")
    other = {"Authorization": f"Bearer {new_key('other')}"}
    elsewhere = api.post("/v1/webhooks", json={"url": "https://o.example.com"}, headers=other)

    request = submit(api, registered, caller_reference="DSR-7", upstream_request_id="up-7")
    job_id = request["job"]["id"]
    assert api.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "canceled"

    rows = api.get(f"/v1/webhooks/{live['id']}/deliveries").json()
    assert [d["event_type"] for d in rows] == [
        "deletion_request.canceled",
        "deletion_request.queued",
    ]  # newest first
    queued = rows[1]
    assert queued["status"] == "pending" and queued["attempts"] == 0
    assert queued["request_id"] == request["id"]
    assert queued["payload"]["id"] == queued["id"]
    assert queued["payload"]["type"] == "deletion_request.queued"
    assert queued["payload"]["data"] == {
        "request_id": request["id"],
        "job_id": job_id,
        "status": "queued",
        "previous_status": None,
        "reason": "deletion request accepted",
        "caller_reference": "DSR-7",
        "upstream_request_id": "up-7",
    }
    assert rows[0]["payload"]["data"]["previous_status"] == "queued"
    pending = api.get(f"/v1/webhooks/{live['id']}/deliveries", params={"status": "delivered"})
    assert pending.json() == []
    assert api.get(f"/v1/webhooks/{gone['id']}/deliveries").json() == []
    other_rows = api.get(f"/v1/webhooks/{elsewhere.json()['id']}/deliveries", headers=other)
    assert other_rows.json() == []
    # A cancel request of a running job is not a state change: only transitions notify.
    assert "job.cancel_requested" not in {d["event_type"] for d in rows}


# --- the delivery task, in process, on both backends ----------------------------------------


def one_delivery(api: Any, registered: dict[str, Any], url: str) -> tuple[dict[str, Any], str]:
    hook = create_hook(api, url)
    submit(api, registered)
    (row,) = api.get(f"/v1/webhooks/{hook['id']}/deliveries").json()
    return hook, str(row["id"])


def delivery(api: Any, hook: dict[str, Any], delivery_id: str) -> dict[str, Any]:
    rows = api.get(f"/v1/webhooks/{hook['id']}/deliveries").json()
    return next(r for r in rows if r["id"] == delivery_id)


@both_backends
def test_a_delivery_is_signed_and_sent_once(api, registered, receiver):
    from workers.webhooks import deliver

    hook, delivery_id = one_delivery(api, registered, receiver.url)
    assert deliver(delivery_id) == "delivered"
    assert deliver(delivery_id) == "skipped"  # a duplicate message does nothing
    (got,) = receiver.received
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers[signature.ID_HEADER] == delivery_id
    assert abs(int(got.headers[signature.TIMESTAMP_HEADER]) - time.time()) < 60
    assert signature.verify(hook["secret"], got.headers, got.body)
    assert not signature.verify(hook["secret"], got.headers, got.body.replace(b"queued", b"xueued"))
    assert not signature.verify("whsec_wrong", got.headers, got.body)
    stale = time.time() + 301
    assert not signature.verify(hook["secret"], got.headers, got.body, now=stale)
    row = delivery(api, hook, delivery_id)
    assert got.event == row["payload"]  # the exact stored payload
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("delivered", 1, 200)
    assert row["last_error"] is None and row["delivered_at"] is not None


@both_backends
def test_failures_back_off_then_give_up(api, registered, monkeypatch):
    from app.config import get_settings
    from workers.webhooks import deliver

    monkeypatch.setenv("NEPENTHE_WEBHOOK_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("NEPENTHE_WEBHOOK_BACKOFF_S", "0.3")
    get_settings.cache_clear()
    with Receiver(fail_first=5) as failing:
        hook, delivery_id = one_delivery(api, registered, failing.url)
        before = time.time()
        assert deliver(delivery_id) == "retrying"
        row = delivery(api, hook, delivery_id)
        assert (row["status"], row["attempts"], row["last_status_code"]) == ("pending", 1, 500)
        assert row["last_error"] == "HTTP 500"
        due = _epoch(row["next_attempt_at"])
        assert before + 0.3 - 1 <= due <= time.time() + 0.3 + 1
        assert deliver(delivery_id) == "deferred"  # not due yet: waits, sends nothing
        assert len(failing.received) == 1
        time.sleep(max(0.0, due - time.time()) + 0.05)
        assert deliver(delivery_id) == "failed"
        assert len(failing.received) == 2
    row = delivery(api, hook, delivery_id)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("failed", 2, 500)
    assert deliver(delivery_id) == "skipped"
    (event,) = actions(api, "webhook.delivery_failed")
    assert event["actor"].startswith("worker:")
    assert event["request_id"] == row["request_id"]
    assert event["details"]["delivery_id"] == delivery_id
    assert event["details"]["attempts"] == 2
    assert event["details"]["last_status_code"] == 500
    assert api.get("/v1/audit/verify").json()["ok"] is True


@both_backends
def test_an_unreachable_receiver_counts_as_a_failed_attempt(api, registered):
    from workers.webhooks import deliver

    hook, delivery_id = one_delivery(api, registered, f"http://127.0.0.1:{free_port()}/x")
    assert deliver(delivery_id) == "retrying"
    row = delivery(api, hook, delivery_id)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("pending", 1, None)
    assert row["last_error"].startswith("ConnectError")


class RebindingResolver:
    """A name that resolves to a public address for the first ``honest`` lookups, then to the
    loopback address where ``receiver`` listens: what a rebinding DNS server does."""

    def __init__(self, name: str, honest: int) -> None:
        import socket

        self.name, self.honest, self.lookups = name, honest, 0
        self.real = socket.getaddrinfo

    def __call__(self, host: Any, *args: Any, **kwargs: Any) -> Any:
        import socket

        if host != self.name:
            return self.real(host, *args, **kwargs)
        self.lookups += 1
        address = "93.184.216.34" if self.lookups <= self.honest else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, 0))]


def test_a_rebinding_name_cannot_turn_a_delivery_inward(api, registered, receiver, monkeypatch):
    """Checked public at creation and at the send, loopback when httpx would resolve it to
    connect: the delivery goes to the address that was checked, never to the receiver inside."""
    import socket

    from tests.conftest import reset_caches
    from workers.webhooks import deliver

    monkeypatch.setenv("NEPENTHE_WEBHOOK_ALLOW_PRIVATE", "false")
    monkeypatch.setenv("NEPENTHE_WEBHOOK_TIMEOUT_S", "1")
    reset_caches()
    resolver = RebindingResolver("rebind.test", honest=2)
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    port = receiver.server.server_address[1]
    hook, delivery_id = one_delivery(api, registered, f"http://rebind.test:{port}/hooks")
    assert deliver(delivery_id) == "retrying"  # 93.184.216.34 is not reachable from here
    assert receiver.received == []
    assert resolver.lookups == 2  # at creation and at the send; never again to connect
    row = delivery(api, hook, delivery_id)
    assert row["attempts"] == 1 and row["last_status_code"] is None


def test_a_pinned_delivery_keeps_its_host_header_and_tls_name():
    import ipaddress

    from workers.webhooks import pinned

    url, host, tls = pinned("https://u:p@hooks.example.com:8443/x?t=1", ipaddress.ip_address("::1"))
    assert (url, host, tls) == (
        "https://u:p@[::1]:8443/x?t=1",
        "hooks.example.com:8443",
        "hooks.example.com",
    )
    url, host, tls = pinned("http://hooks.example.com/x", ipaddress.ip_address("93.184.216.34"))
    assert (url, host, tls) == ("http://93.184.216.34/x", "hooks.example.com", None)


@both_backends
def test_a_disabled_webhooks_pending_deliveries_end_as_failed(api, registered, receiver):
    from workers.webhooks import deliver

    hook, delivery_id = one_delivery(api, registered, receiver.url)
    assert api.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
    assert deliver(delivery_id) == "skipped"
    assert receiver.received == []
    row = delivery(api, hook, delivery_id)
    assert (row["status"], row["attempts"]) == ("failed", 0)
    assert "disabled" in row["last_error"]


def queue_of(service_env: dict[str, str]) -> str:
    return service_env.get("NEPENTHE_WEBHOOK_QUEUE", "webhooks")


def broker_messages(service_env: dict[str, str], queue: str) -> list[str]:
    """The raw messages waiting on ``queue`` in the real broker (filesystem folder or Redis)."""
    if service_env["NEPENTHE_BROKER_URL"].startswith("redis://"):
        import redis

        with redis.Redis.from_url(service_env["NEPENTHE_BROKER_URL"]) as client:
            return [m.decode() for m in client.lrange(queue, 0, -1)]
    folder = Path(service_env["NEPENTHE_BROKER_DIR"]) / "queue"
    return [f.read_text() for f in folder.iterdir() if f.name.endswith(f".{queue}.msg")]


@both_backends
def test_sends_go_to_the_webhook_queue_and_a_starting_worker_resends_due_ones(
    api, registered, service_env
):
    from workers.webhooks import resend_due_deliveries

    hook, delivery_id = one_delivery(api, registered, "https://hooks.example.com/x")
    sent = [m for m in broker_messages(service_env, queue_of(service_env)) if delivery_id in m]
    assert len(sent) == 1 and "webhooks.deliver" in sent[0]  # sent after the commit
    resend_due_deliveries()  # as if that message had been lost
    sent = [m for m in broker_messages(service_env, queue_of(service_env)) if delivery_id in m]
    assert len(sent) == 2
    assert delivery(api, hook, delivery_id)["status"] == "pending"


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# --- end to end: API and worker processes, a real job ---------------------------------------

TINY_PARAMS = {
    "noise_batch": 8,
    "noise_steps": 2,
    "noise_repeats": 2,
    "retain_per_class": 20,
    "impair_batch_size": 32,
    "repair_epochs": 1,
    "repair_batch_size": 32,
    "max_extra_repair_epochs": 0,
    "seed": 0,
}
NO_ACCEPTANCE_CHECKS = {
    "max_forget_accuracy": None,
    "max_retain_drop": None,
    "max_mia_gap": None,
    "max_forget_member_excess": None,
    "max_forget_member_shortfall": None,
}


@pytest.mark.e2e
@pytest.mark.parametrize("service_env", ["embedded"], indirect=True)
def test_job_state_changes_reach_the_webhook_signed_despite_failures(
    service_env, tmp_path, flaky_receiver
):
    env = {**service_env, "NEPENTHE_WEBHOOK_BACKOFF_S": "0.2"}
    with LocalService(env, ROOT, tmp_path / "logs", org="acme") as service:
        client = NepentheClient(service.url, service.admin_key)
        try:
            _end_to_end(client, tmp_path, flaky_receiver)
        finally:
            client.close()


def _end_to_end(client: NepentheClient, tmp_path: Path, receiver: Receiver) -> None:
    hook = client.http.post("/v1/webhooks", json={"url": receiver.url})
    assert hook.status_code == 201, hook.text
    hook_id, secret = hook.json()["id"], hook.json()["secret"]

    # The job's outcome is what matters here, not its quality: untrained weights, the smallest
    # parameters and the acceptance checks off make it succeed in a few seconds.
    path = tmp_path / "original.safetensors"
    path.write_bytes(untrained_safetensors())
    model = client.register_model(
        name="digits-cnn",
        task="classification",
        architecture=ARCH,
        input_shape=[1, 8, 8],
        normalization={"mean": [0.5], "std": [0.5]},
        class_names=CLASS_NAMES,
    )
    version = client.upload_version(model["id"], path)
    dataset = client.register_dataset("digits", "sklearn_digits")
    request, _ = client.submit_deletion(
        idempotency_key=str(uuid.uuid4()),
        model_version_id=version["id"],
        dataset_id=dataset["id"],
        forget_classes=[3, 8],
        method="unsir",
        params=TINY_PARAMS,
        acceptance=NO_ACCEPTANCE_CHECKS,
        caller_reference="DSR-HOOK",
        upstream_request_id="upstream-42",
    )
    job = client.wait(request["job"]["id"], timeout=120, poll_s=0.2)
    assert job["status"] == "succeeded", job["error"]

    wanted = ["queued", "running", "succeeded"]
    deadline = time.monotonic() + 30
    while sorted(r.event["data"]["status"] for r in receiver.accepted()) != sorted(wanted):
        assert time.monotonic() < deadline, [r.event["type"] for r in receiver.received]
        time.sleep(0.1)

    # Every request, failed or not, was signed with the webhook's secret over its exact body.
    assert len(receiver.received) == 3 * len(wanted)
    for got in receiver.received:
        assert signature.verify(secret, got.headers, got.body)
        tampered = got.body.replace(b'"DSR-HOOK"', b'"DSR-EVIL"')
        assert tampered != got.body
        assert not signature.verify(secret, got.headers, tampered)
    events = {r.event["data"]["status"]: r.event for r in receiver.accepted()}
    for status in wanted:
        event = events[status]
        assert event["type"] == f"deletion_request.{status}"
        data = event["data"]
        assert data["request_id"] == request["id"] and data["job_id"] == job["id"]
        assert data["caller_reference"] == "DSR-HOOK"
        assert data["upstream_request_id"] == "upstream-42"
    assert events["running"]["data"]["previous_status"] == "queued"
    assert events["succeeded"]["data"]["previous_status"] == "running"
    assert events["succeeded"]["data"]["output_version_id"] == job["output_version"]["id"]
    assert "output_version_id" not in events["queued"]["data"]

    # The worker records the outcome just after the receiver answers: poll for it.
    deadline = time.monotonic() + 10
    while True:
        rows = client.http.get(f"/v1/webhooks/{hook_id}/deliveries").json()
        if all(r["status"] == "delivered" for r in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    by_type = {r["event_type"]: r for r in rows}
    assert set(by_type) == {f"deletion_request.{s}" for s in wanted}
    first = by_type["deletion_request.queued"]
    assert first["attempts"] >= 3
    for row in rows:
        assert (row["status"], row["attempts"], row["last_status_code"]) == ("delivered", 3, 200)
        assert row["id"] == row["payload"]["id"]
    audit = [e["action"] for e in client.audit()]
    assert "webhook.created" in audit and "webhook.delivery_failed" not in audit
