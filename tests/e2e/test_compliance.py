"""The auditor's side, through real processes (uvicorn + Celery worker on PostgreSQL + Redis):
a signed receipt at acceptance, a signed certificate at completion that verifies offline and
fails when altered, supersession of the versions that still hold the data, and the evidence
export."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import pytest

from client.api import ApiError, NepentheClient
from client.cli import main as cli
from client.local import LocalService
from tests.e2e.test_service import register

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("service_env", ["production"], indirect=True),
]


def key(service: LocalService, *scopes: str) -> NepentheClient:
    admin = NepentheClient(service.url, service.admin_key)
    token = admin.create_key(f"{'-'.join(scopes)}-key", list(scopes))["token"]
    admin.close()
    return NepentheClient(service.url, token)


def run_cli(service: LocalService, capsys: pytest.CaptureFixture[str], *args: str) -> int:
    code = cli(["--url", service.url, "--api-key", service.admin_key, *args])
    return code


def test_receipt_certificate_supersession_and_evidence(service, client, tmp_path, capsys):
    admin = client  # closed by the fixture, also when the test fails
    reg = register(admin, tmp_path)
    request, _ = admin.submit_deletion(
        idempotency_key=str(uuid.uuid4()),
        model_version_id=reg["version"]["id"],
        dataset_id=reg["dataset"]["id"],
        forget_classes=[3, 8],  # no method, no parameters: the default a user gets
        caller_reference="DSR-2026-0042",
        upstream_request_id="opendsr-7f3a",
    )
    public_key = tmp_path / "nepenthe.pem"
    assert run_cli(service, capsys, "signing-key", "-o", str(public_key)) == 0

    # The receipt: signed at acceptance; it names the input and a hash of what to forget.
    receipt_file = tmp_path / "receipt.json"
    assert run_cli(service, capsys, "receipt", request["id"], "-o", str(receipt_file)) == 0
    receipt = json.loads(receipt_file.read_text())["payload"]
    assert receipt["type"] == "nepenthe.deletion_receipt"
    assert receipt["request_id"] == request["id"]
    assert receipt["input_checkpoint_sha256"] == reg["version"]["sha256"]
    assert receipt["forget_spec_sha256"] == request["forget_spec_sha256"]
    assert receipt["forget"] == {"kind": "classes", "count": 2}
    assert (receipt["caller_reference"], receipt["upstream_request_id"]) == (
        "DSR-2026-0042",
        "opendsr-7f3a",
    )
    capsys.readouterr()
    assert cli(["verify", str(receipt_file), "--public-key", str(public_key)]) == 0
    with pytest.raises(ApiError) as missing:
        admin.request_document(request["id"], "certificate")
    assert missing.value.code == "certificate_not_issued"

    job = admin.wait(request["job"]["id"], timeout=300)
    assert job["status"] == "succeeded", job["error"]
    output = job["output_version"]
    # The default on a BatchNorm network: attempts until the gate passes, within 0.1 epochs.
    attempts = job["metrics"]["method_details"]["attempts"]
    assert attempts[-1]["gate"] == "passed" and attempts[0]["method"] == "head_refit"
    assert all(a["gate"] == "failed" and a["next"] for a in attempts[:-1])
    assert job["metrics"]["cost"]["epoch_equivalents"]["method"] <= 0.1 + 1e-9
    succeeded = [e for e in admin.audit(request_id=request["id"]) if e["action"] == "job.succeeded"]
    assert succeeded[0]["details"]["metrics"]["method_details"]["attempts"] == attempts

    # The certificate: offline verification passes, and fails once any figure is altered.
    cert_file = tmp_path / "certificate.json"
    assert run_cli(service, capsys, "certificate", request["id"], "-o", str(cert_file)) == 0
    capsys.readouterr()
    assert cli(["verify", str(cert_file), "--public-key", str(public_key)]) == 0
    assert "valid nepenthe.deletion_certificate" in capsys.readouterr().out
    certificate = json.loads(cert_file.read_text())
    c = certificate["payload"]
    assert c["output_checkpoint_sha256"] == output["sha256"]
    assert c["input_checkpoint_sha256"] == reg["version"]["sha256"]
    assert c["request_id"] == request["id"] and c["method"] == "auto" and c["seed"] == 0
    assert c["device"] == "cpu" and c["code_version"]
    assert c["completed_at"] >= c["started_at"] >= c["received_at"]
    assert c["acceptance"]["passed"] is True
    assert c["metrics"]["after"]["forget_accuracy"] <= 0.05
    assert c["receipt_signature"] == json.loads(receipt_file.read_text())["signature"]["value"]
    # The forget set appears as its hash (and, in the metrics, as class labels): never as ids.
    assert "forget_classes" not in c and "forget_samples" not in c
    tampered = tmp_path / "tampered.json"
    for field, value in (
        ("output_checkpoint_sha256", "0" * 64),
        ("completed_at", c["received_at"]),
    ):
        altered = json.loads(cert_file.read_text())
        altered["payload"][field] = value
        tampered.write_text(json.dumps(altered))
        assert cli(["verify", str(tampered), "--public-key", str(public_key)]) == 1
        assert "altered" in capsys.readouterr().err
    altered = json.loads(cert_file.read_text())
    altered["payload"]["metrics"]["after"]["retain_accuracy"] += 0.25
    tampered.write_text(json.dumps(altered))
    assert cli(["verify", str(tampered), "--public-key", str(public_key)]) == 1
    other_key = tmp_path / "other.pem"
    from app.signing import create_key_file, load_signer, public_pem

    create_key_file(tmp_path / "other-private.pem")
    other_key.write_text(public_pem(load_signer(tmp_path / "other-private.pem").public_key))
    assert cli(["verify", str(cert_file), "--public-key", str(other_key)]) == 1

    # Supersession: the original still holds 3 and 8, so it cannot be fetched casually.
    model_id = reg["model"]["id"]
    assert admin.get_version(model_id, 1)["superseded_by_request_id"] == request["id"]
    assert admin.get_version(model_id, 2)["superseded_at"] is None
    downloader = key(service, "download")
    with pytest.raises(ApiError) as refused:
        downloader.download(reg["version"]["download_url"], tmp_path / "v1.safetensors")
    assert (refused.value.status, refused.value.code) == (410, "version_superseded")
    with pytest.raises(ApiError) as not_admin:
        downloader.download(
            reg["version"]["download_url"],
            tmp_path / "v1.safetensors",
            override_reason="legal hold",
        )
    assert not_admin.value.code == "insufficient_scope"
    downloader.download(output["download_url"], tmp_path / "v2.safetensors")
    digest = admin.download(
        reg["version"]["download_url"],
        tmp_path / "v1.safetensors",
        override_reason="court order 12/2026: preserve evidence",
    )
    assert digest == hashlib.sha256((tmp_path / "v1.safetensors").read_bytes()).hexdigest()
    overrides = list(admin.audit(action="model_version.downloaded_superseded"))
    assert [e["details"]["override_reason"] for e in overrides] == [
        "court order 12/2026: preserve evidence"
    ]
    with pytest.raises(ApiError) as stale:
        admin.submit_deletion(
            model_version_id=reg["version"]["id"],
            dataset_id=reg["dataset"]["id"],
            forget_classes=[1],
        )
    assert (stale.value.status, stale.value.code) == (409, "input_superseded")
    versions = admin.request_versions(request["id"])
    held = {v["number"]: v["contains_forgotten_data"] for v in versions}
    assert held == {1: True, 2: False}

    # The evidence export: one signed document with the receipt, certificate and events.
    evidence_file = tmp_path / "evidence.json"
    auditor = key(service, "audit")
    evidence = auditor.request_document(request["id"], "evidence")
    evidence_file.write_text(json.dumps(evidence))
    assert cli(["verify", str(evidence_file), "--public-key", str(public_key)]) == 0
    e: dict[str, Any] = evidence["payload"]
    assert e["certificate"] == json.loads(cert_file.read_text())
    actions = [ev["action"] for ev in e["audit_events"]]
    assert actions[:3] == ["deletion_request.created", "job.queued", "job.running"]
    assert "job.succeeded" in actions
    succeeded = next(ev for ev in e["audit_events"] if ev["action"] == "job.succeeded")
    assert succeeded["actor"].startswith("worker:")
    assert succeeded["details"]["superseded_version_ids"] == [reg["version"]["id"]]
    assert [s["to_status"] for s in e["job_events"]] == ["queued", "running", "succeeded"]
    assert auditor.audit_verify()["ok"] is True
    # A head exported now anchors a later check; a forged head is refused before it is used.
    head = tmp_path / "head.json"
    assert run_cli(service, capsys, "audit-head", "-o", str(head)) == 0
    anchored = ["--anchor", str(head), "--public-key", str(public_key)]
    assert run_cli(service, capsys, "audit-verify", *anchored) == 0
    forged = json.loads(head.read_text())
    forged["payload"]["seq"] += 1000
    head.write_text(json.dumps(forged))
    capsys.readouterr()
    assert run_cli(service, capsys, "audit-verify", *anchored) == 1
    assert "INVALID anchor" in capsys.readouterr().err
    found = list(auditor.list_requests({"upstream_request_id": "opendsr-7f3a"}))
    assert [r["id"] for r in found] == [request["id"]]
    assert found[0]["open"] is False and found[0]["completed_at"] is not None
    for client in (admin, downloader, auditor):
        client.close()


def _deletion(admin: NepentheClient, version_id: str, dataset_id: str, **body: Any) -> dict:
    request, _ = admin.submit_deletion(
        idempotency_key=str(uuid.uuid4()),
        model_version_id=version_id,
        dataset_id=dataset_id,
        **body,
    )
    return request


# One epoch of fine-tuning at a tiny step forgets nothing: the gate rejects it.
FORGETS_NOTHING = {"method": "finetune", "params": {"epochs": 1, "lr": 1e-6}}


def test_a_retried_request_succeeds_and_satisfies_an_earlier_one(service, client, tmp_path):
    admin = client  # closed by the fixture, also when the test fails
    reg = register(admin, tmp_path)
    version, dataset = reg["version"]["id"], reg["dataset"]["id"]
    earlier = _deletion(admin, version, dataset, forget_classes=[3], **FORGETS_NOTHING)
    first = _deletion(admin, version, dataset, forget_classes=[3, 5], **FORGETS_NOTHING)
    for request in (earlier, first):
        assert admin.wait(request["job"]["id"], timeout=300)["status"] == "rejected"
    with pytest.raises(ApiError) as refused:
        admin.cancel_job(first["job"]["id"])
    assert refused.value.code == "job_not_cancelable"

    # Retried under the same request, with another method: the deadline stands, the history
    # keeps the rejected attempt, the certificate names what finally ran.
    retried = admin.retry(first["id"], "the fine-tune forgot nothing", method="auto", params={})
    assert retried["job"]["status"] == "queued" and retried["due_at"] == first["due_at"]
    assert admin.wait(first["job"]["id"], timeout=300)["status"] == "succeeded"
    history = [(e["from_status"], e["to_status"]) for e in admin.job_events(first["job"]["id"])]
    assert ("running", "rejected") in history and ("rejected", "queued") in history
    certificate = admin.request_document(first["id"], "certificate")["payload"]
    assert certificate["method"] == "auto"
    (event,) = admin.audit(action="deletion_request.retried", request_id=first["id"])
    assert event["details"]["previous"]["method"] == "finetune"
    assert event["details"]["reason"] == "the fine-tune forgot nothing"

    # That success forgot all of the earlier request's data, on the same model: the earlier
    # one leaves the open requests and the deadlines, naming the request that satisfied it.
    satisfied = admin.get_request(earlier["id"])
    assert satisfied["satisfied_by_request_id"] == first["id"] and satisfied["open"] is False
    assert earlier["id"] not in [r["id"] for r in admin.deadlines(within_days=60)]
    actions = [e["action"] for e in admin.audit(request_id=earlier["id"])]
    assert actions[-1] == "deletion_request.satisfied"
