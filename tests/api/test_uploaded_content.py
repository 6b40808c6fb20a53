"""The file a customer uploaded is named beside the stored (canonical) one, in the version, its
audit event, the receipt, the certificate and the evidence (issue 15, item 11)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import torch
from sqlalchemy import event

from app.db import get_engine
from app.jobs import outcome as job_outcome
from app.signing import load_public_key, verify
from tests.api.test_bad_input import submit, upload
from tests.conftest import BACKENDS
from tests.helpers import model_body, safetensors_bytes, torch_bytes, trained_state
from unlearning.jobs import Outcome
from workers.tasks import claim

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unlearned_state() -> dict[str, torch.Tensor]:
    """Weights other than the original's: what a job would publish."""
    return {k: v + 0.01 if v.is_floating_point() else v for k, v in trained_state().items()}


def succeed(api, registered: dict[str, Any], key: str = "S") -> tuple[dict[str, Any], Any]:
    """A deletion request whose job succeeds, recorded by the worker's own functions (the
    unlearning itself is not run: its result is made up)."""
    request = submit(api, registered, key=key).json()
    job_id = request["job"]["id"]
    ctx = job_outcome.load_context(job_id, claim(job_id))
    figures = {"forget_accuracy": 0.0, "retain_accuracy": 0.9}
    figures |= {"mia": {"entropy": {"forget_member_rate": 0.5}}}
    metrics = {
        "phase_seconds": {"method": 1.0},
        "before": figures,
        "after": figures,
        "acceptance": {"passed": True},
    }
    assert job_outcome.store_outcome(ctx, Outcome(metrics, unlearned_state(), []))
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    return request, job


def public_key(api):
    return load_public_key(api.get("/v1/signing-key").json()["public_key_pem"].encode())


def test_a_version_records_the_uploaded_file_beside_the_stored_one(api, registered):
    sent = safetensors_bytes()
    version = registered["version"]
    assert (version["uploaded_sha256"], version["uploaded_size_bytes"]) == (sha(sent), len(sent))
    stored = api.get(version["download_url"]).content
    assert (version["sha256"], version["size_bytes"]) == (sha(stored), len(stored))
    # The store re-serialises (here: it adds the {"format": "pt"} metadata), so the two differ.
    assert version["sha256"] != version["uploaded_sha256"]
    got = api.get(f"/v1/models/{version['model_id']}/versions/1").json()
    assert got["uploaded_sha256"] == sha(sent)
    events = api.get("/v1/audit/events", params={"action": "model_version.uploaded"}).json()
    details = events["items"][-1]["details"]
    assert (details["uploaded_sha256"], details["uploaded_size_bytes"]) == (sha(sent), len(sent))
    assert (details["sha256"], details["size_bytes"]) == (version["sha256"], len(stored))

    # The same weights as a .pt file: the same stored file, another uploaded one.
    other = api.post("/v1/models", json=model_body("as-torch")).json()
    pt = torch_bytes(dict(trained_state()))
    from_torch = upload(api, other["id"], pt, "w.pt").json()
    assert from_torch["sha256"] == version["sha256"]
    assert (from_torch["uploaded_sha256"], from_torch["uploaded_size_bytes"]) == (sha(pt), len(pt))
    # A stored file uploaded again is its own canonical form.
    again = upload(api, other["id"], stored).json()
    assert again["sha256"] == again["uploaded_sha256"] == version["sha256"]


def test_receipt_certificate_and_evidence_name_the_uploaded_file(api, registered):
    sent = sha(safetensors_bytes())
    request, job = succeed(api, registered)
    receipt = verify(api.get(request["receipt_url"]).json(), public_key(api))
    assert receipt["input_checkpoint_uploaded_sha256"] == sent
    assert receipt["input_checkpoint_uploaded_size_bytes"] == len(safetensors_bytes())
    assert receipt["input_checkpoint_sha256"] == registered["version"]["sha256"]
    certificate = verify(
        api.get(f"/v1/deletion-requests/{request['id']}/certificate").json(), public_key(api)
    )
    assert certificate["input_checkpoint_uploaded_sha256"] == sent
    assert certificate["input_checkpoint_sha256"] == registered["version"]["sha256"]
    output = job["output_version"]
    assert certificate["output_checkpoint_sha256"] == output["sha256"]
    assert output["uploaded_sha256"] is None and output["uploaded_size_bytes"] is None
    evidence = verify(
        api.get(f"/v1/deletion-requests/{request['id']}/evidence").json(), public_key(api)
    )
    by_id = {v["id"]: v for v in evidence["versions"]}
    assert by_id[registered["version"]["id"]]["uploaded_sha256"] == sent
    assert by_id[output["id"]]["uploaded_sha256"] is None


def test_a_listing_links_certificates_without_reading_the_signed_documents(api, registered):
    """A page of requests says which have a certificate (and links it) but leaves every signed
    receipt and certificate unread: they were most of a page's JSON decoding."""
    pending = submit(api, registered, key="pending").json()
    certified, _ = succeed(api, registered)
    statements: list[str] = []

    def note(_conn, _cursor, statement, *_args):
        statements.append(statement)

    engines = {get_engine(), get_engine(read_only=True)}
    for engine in engines:
        event.listen(engine, "before_cursor_execute", note)
    try:
        page = api.get("/v1/deletion-requests").json()
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", note)
    links = {r["id"]: r["certificate_url"] for r in page}
    assert links[certified["id"]] == f"/v1/deletion-requests/{certified['id']}/certificate"
    assert links[pending["id"]] is None
    listing = [s for s in statements if "FROM deletion_request" in s and "JOIN job" in s]
    assert listing, statements
    assert all("deletion_request.receipt" not in s for s in listing)
    assert all("deletion_request.certificate," not in s for s in listing)
    assert api.get(f"/v1/deletion-requests/{certified['id']}/certificate").status_code == 200
