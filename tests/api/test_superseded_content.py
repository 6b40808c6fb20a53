"""Weights a deletion superseded stay superseded whatever file or model they come back under: an
upload of them is refused, copies uploaded earlier are superseded with the original, and every
version with some weights can be found by a file's SHA-256 (issue 15, item 12)."""

from __future__ import annotations

import hashlib
import json

import pytest
from sqlalchemy import update

from app.actors import Actor
from app.db import session_scope
from app.errors import ContentSuperseded
from app.models import service as models
from app.orm import ModelVersion, utcnow
from app.storage import get_store
from client.api import NepentheClient
from tests.api.test_bad_input import assert_problem, upload
from tests.api.test_uploaded_content import succeed, unlearned_state
from tests.conftest import BACKENDS, new_key, snapshot
from tests.helpers import model_body, safetensors_bytes, torch_bytes, trained_state
from unlearning import checkpoints

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def refused_uploads(api) -> list[dict]:
    found = api.get("/v1/audit/events", params={"action": "model_version.upload_refused"})
    return list(found.json()["items"])


def test_superseded_weights_are_refused_under_any_model_audited_and_nothing_is_kept(
    api, registered, store
):
    other = api.post("/v1/models", json=model_body("same-weights-elsewhere")).json()
    request, job = succeed(api, registered)
    original = registered["version"]
    before = snapshot(store)
    attempts = {
        "the same file, same model": (registered["model"]["id"], safetensors_bytes(), "w.st"),
        "the same file, another model": (other["id"], safetensors_bytes(), "w.st"),
        "the same weights as .pt": (other["id"], torch_bytes(dict(trained_state())), "w.pt"),
        "the stored file itself": (
            registered["model"]["id"],
            checkpoints.canonical_bytes(trained_state()),
            "w.st",
        ),
    }
    for what, (model_id, payload, name) in attempts.items():
        body = assert_problem(upload(api, model_id, payload, name), 409, "content_superseded")
        assert body["superseded_version_id"] == original["id"], what
        assert body["superseded_model_id"] == registered["model"]["id"]
        assert body["superseded_version_number"] == 1
        assert body["superseded_by_request_id"] == request["id"]
        assert body["uploaded_sha256"] == sha(payload)
        assert body["sha256"] == original["sha256"]
        assert request["id"] in body["detail"]
    # Nothing stored, no row: only the refusals' audit events.
    after = snapshot(store)
    assert after["files"] == before["files"]
    assert after["rows"]["audit_event"] == before["rows"]["audit_event"] + len(attempts)
    assert {**after["rows"], "audit_event": 0} == {**before["rows"], "audit_event": 0}
    refusals = refused_uploads(api)
    assert len(refusals) == len(attempts)
    for event, (model_id, payload, _) in zip(refusals, attempts.values(), strict=True):
        assert (event["model_id"], event["request_id"]) == (model_id, request["id"])
        assert event["model_version_id"] == original["id"]
        assert event["details"]["code"] == "content_superseded"
        assert event["details"]["uploaded_sha256"] == sha(payload)
        assert event["details"]["uploaded_size_bytes"] == len(payload)
    evidence = api.get(f"/v1/deletion-requests/{request['id']}/evidence").json()["payload"]
    assert "model_version.upload_refused" in [e["action"] for e in evidence["audit_events"]]
    assert api.get("/v1/audit/verify").json()["ok"] is True

    # The unlearned weights are welcome anywhere; another organisation learns nothing.
    clean = upload(api, other["id"], safetensors_bytes(unlearned_state()))
    assert clean.status_code == 201, clean.text
    assert clean.json()["sha256"] == job["output_version"]["sha256"]
    assert clean.json()["superseded_at"] is None
    stranger = {"Authorization": f"Bearer {new_key('another-org')}"}
    theirs = api.post("/v1/models", json=model_body(), headers=stranger).json()
    files = {"file": ("w.safetensors", safetensors_bytes(), "application/octet-stream")}
    response = api.post(f"/v1/models/{theirs['id']}/versions", files=files, headers=stranger)
    assert response.status_code == 201, response.text
    assert response.json()["superseded_at"] is None


def test_a_supersession_between_checking_and_recording_is_still_refused(api, registered, tmp_path):
    """A job that supersedes the weights while their upload is being checked: the check under
    the model's and organisation's locks sees it."""
    org_id = api.get("/v1/whoami").json()["org_id"]
    path = tmp_path / "w.safetensors"
    path.write_bytes(safetensors_bytes())
    other = api.post("/v1/models", json=model_body("raced")).json()
    with session_scope(read_only=True) as read:
        prepared = models.prepare_version(read, get_store(), org_id, other["id"], path, None)
    request = api.post(
        "/v1/deletion-requests",
        json={
            "model_version_id": registered["version"]["id"],
            "dataset_id": registered["dataset"]["id"],
            "forget_classes": [3],
        },
    ).json()
    with session_scope() as session:  # as if that request's job finished meanwhile
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.id == registered["version"]["id"])
            .values(superseded_at=utcnow(), superseded_by_request_id=request["id"])
        )
    with pytest.raises(ContentSuperseded), session_scope() as session:
        models.record_version(session, prepared, Actor(org_id, "key:test"))
    assert api.get(f"/v1/models/{other['id']}/versions").json() == []
    assert get_store().exists(prepared.stored.key)  # the superseded version's own file


def test_copies_uploaded_before_a_deletion_are_superseded_with_it_and_found_by_hash(
    api, registered, tmp_path, monkeypatch, capsys
):
    model_id = registered["model"]["id"]
    sent = safetensors_bytes()
    pt = torch_bytes(dict(trained_state()))
    copy = upload(api, model_id, sent).json()  # the same file again, same model
    other = api.post("/v1/models", json=model_body("copy-elsewhere")).json()
    as_torch = upload(api, other["id"], pt, "w.pt").json()  # the same weights, as .pt
    child = api.post(
        f"/v1/models/{other['id']}/versions",
        files={"file": ("c.safetensors", safetensors_bytes(unlearned_state()))},
        data={"parent_version_id": as_torch["id"]},
    ).json()  # fine-tuned from the copy: holds the data too
    stranger = {"Authorization": f"Bearer {new_key('another-org')}"}
    theirs = api.post("/v1/models", json=model_body(), headers=stranger).json()
    files = {"file": ("w.safetensors", sent, "application/octet-stream")}
    foreign = api.post(f"/v1/models/{theirs['id']}/versions", files=files, headers=stranger)
    assert foreign.status_code == 201

    # Every version with these weights, by any of their files' hashes; the organisation's only.
    same = [registered["version"]["id"], copy["id"], as_torch["id"]]
    for digest in (sha(sent), sha(pt), registered["version"]["sha256"].upper()):
        found = api.get("/v1/model-versions", params={"sha256": digest})
        assert found.status_code == 200, found.text
        assert [v["id"] for v in found.json()] == same
    assert api.get("/v1/model-versions", params={"sha256": "0" * 64}).json() == []
    bad = api.get("/v1/model-versions", params={"sha256": "not-a-digest"})
    assert_problem(bad, 422, "validation_error")

    request, job = succeed(api, registered)
    output = job["output_version"]
    holding = [*same, child["id"]]
    everything = api.get(f"/v1/models/{model_id}/versions").json()
    everything += api.get(f"/v1/models/{other['id']}/versions").json()
    marked = {v["id"]: v["superseded_by_request_id"] for v in everything}
    assert marked == {**dict.fromkeys(holding, request["id"]), output["id"]: None}
    contained = api.get(f"/v1/deletion-requests/{request['id']}/versions").json()
    assert {v["id"]: v["contains_forgotten_data"] for v in contained} == {
        **dict.fromkeys(holding, True),
        output["id"]: False,
    }
    assert {v["id"]: v["model_id"] for v in contained}[as_torch["id"]] == other["id"]
    events = api.get("/v1/audit/events", params={"request_id": request["id"]}).json()["items"]
    succeeded = next(e for e in events if e["action"] == "job.succeeded")
    assert sorted(succeeded["details"]["superseded_version_ids"]) == sorted(holding)
    assert api.get(foreign.json()["download_url"], headers=stranger).status_code == 200

    # The command line: by a file (hashed locally) or by a digest.
    class InProcess(NepentheClient):
        def __init__(self, *_: object, **__: object) -> None:
            self.http = api

        def close(self) -> None:
            pass

    from client import cli

    monkeypatch.setattr(cli, "NepentheClient", InProcess)
    customer_file = tmp_path / "customer.pt"
    customer_file.write_bytes(pt)
    capsys.readouterr()
    assert cli.main(["versions", "--file", str(customer_file)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v["id"], v["superseded_by_request_id"]) for v in listed] == [
        (v, request["id"]) for v in same
    ]
    assert cli.main(["versions", "--sha256", sha(sent)]) == 0
    assert [v["id"] for v in json.loads(capsys.readouterr().out)] == same
    assert cli.main(["versions", request["id"]]) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(holding) + 1
    assert cli.main(["versions"]) == 2
