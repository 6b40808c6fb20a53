"""Receipts name their request and never the forgotten data; supersession follows lineage,
uploads included."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import update

from app.db import session_scope
from app.deletions.evidence import forget_spec_sha256
from app.orm import ModelVersion, utcnow
from app.signing import load_public_key, verify
from tests.api.test_bad_input import submit
from tests.conftest import BACKENDS, new_key
from tests.helpers import safetensors_bytes, trained_state
from unlearning import data

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)


def public_key(api):
    return load_public_key(api.get("/v1/signing-key").json()["public_key_pem"].encode())


def strings(value: object) -> list[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [*value, *(s for v in value.values() for s in strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def test_a_receipt_names_its_request_and_hashes_the_samples(api, registered):
    train_ids = list(data.open_split("sklearn_digits", None, "train").ids[:5])
    request = submit(api, registered, forget_classes=None, forget_samples=train_ids).json()
    document = api.get(request["receipt_url"]).json()
    receipt = verify(document, public_key(api))
    assert receipt["request_id"] == request["id"]
    assert receipt["forget"] == {"kind": "samples", "count": 5}
    assert receipt["forget_spec_sha256"] == request["forget_spec_sha256"]
    assert not set(strings(document)) & set(train_ids)
    evidence = verify(
        api.get(f"/v1/deletion-requests/{request['id']}/evidence").json(), public_key(api)
    )
    assert evidence["receipt"] == document


def test_the_forget_hash_cannot_be_tested_against_guessed_ids_without_the_export(api, registered):
    """A key that reads requests sees the hash; guessing the ids and hashing them must not
    reproduce it. Only the evidence export (audit scope) discloses the salt that does."""
    train_ids = list(data.open_split("sklearn_digits", None, "train").ids[:2])
    spec = (registered["dataset"]["id"], None, None, train_ids)
    first = submit(api, registered, forget_classes=None, forget_samples=train_ids).json()
    again = submit(api, registered, key="again", forget_classes=None, forget_samples=train_ids)
    assert again.json()["forget_spec_sha256"] != first["forget_spec_sha256"]

    reader = api.get(
        f"/v1/deletion-requests/{first['id']}",
        headers={"Authorization": f"Bearer {new_key('acme', 'download')}"},
    ).json()
    assert reader["forget_spec_sha256"] == first["forget_spec_sha256"]
    assert forget_spec_sha256(*spec, None) != first["forget_spec_sha256"]

    export_url = f"/v1/deletion-requests/{first['id']}/evidence"
    as_reader = api.get(
        export_url, headers={"Authorization": f"Bearer {new_key('acme', 'download')}"}
    )
    assert as_reader.status_code == 403
    exported = verify(api.get(export_url).json(), public_key(api))
    salt = exported["forget_spec"]["salt"]
    assert len(salt) == 64 and "salt" in exported["forget_spec"]["hash"]
    assert salt not in json.dumps(reader) and salt not in json.dumps(
        api.get(first["receipt_url"]).json()
    )
    assert forget_spec_sha256(*spec, salt) == first["forget_spec_sha256"]


def test_a_version_derived_from_a_superseded_one_is_superseded_too(api, registered):
    request = submit(api, registered, key="R").json()
    with session_scope() as session:  # as if that request had succeeded
        original = update(ModelVersion).where(ModelVersion.id == registered["version"]["id"])
        session.execute(
            original.values(superseded_at=utcnow(), superseded_by_request_id=request["id"])
        )
    # Fine-tuned from it (the same weights again would be refused: content_superseded).
    tuned = {k: v + 0.01 if v.is_floating_point() else v for k, v in trained_state().items()}
    files = {"file": ("m.safetensors", safetensors_bytes(tuned), "application/octet-stream")}
    child = api.post(
        f"/v1/models/{registered['model']['id']}/versions",
        files=files,
        data={"parent_version_id": registered["version"]["id"]},
    )
    assert child.status_code == 201
    assert child.json()["superseded_by_request_id"] == request["id"]
    response = api.get(child.json()["download_url"])
    assert (response.status_code, response.json()["code"]) == (410, "version_superseded")
    again = submit(api, {**registered, "version": child.json()}, key="R2")
    assert (again.status_code, again.json()["code"]) == (409, "input_superseded")
    held = api.get(f"/v1/deletion-requests/{request['id']}/versions").json()
    assert [(v["number"], v["contains_forgotten_data"]) for v in held] == [(1, True), (2, True)]
    upload = api.get("/v1/audit/events", params={"action": "model_version.uploaded"}).json()
    assert upload["items"][-1]["details"]["superseded_by_request_id"] == request["id"]
