"""Who may do what: every route needs a key, each key is bound to scopes and to one
organisation, and an organisation never sees another's resources, not even their existence."""

from __future__ import annotations

import pytest

from tests.api.test_bad_input import submit
from tests.conftest import BACKENDS, new_key, reset_caches
from tests.helpers import model_body, safetensors_bytes

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)
PROBLEM = "application/problem+json"


def as_key(api, token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_route_but_the_health_check_needs_a_key(api):
    anonymous = {"Authorization": ""}
    assert api.get("/healthz", headers=anonymous).status_code == 200
    checked = 0
    paths = api.app.openapi()["paths"]
    assert set(paths) - {p for p in paths if p.startswith("/v1/")} == {"/healthz"}
    for path, operations in paths.items():
        if path == "/healthz":
            continue
        url = path.replace("{", "").replace("}", "")  # any value: auth comes first
        for method in operations:
            response = api.request(method, url, headers=anonymous)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["content-type"] == PROBLEM
            assert response.json()["code"] == "unauthenticated"
            assert response.headers["www-authenticate"].startswith("Bearer")
            checked += 1
    assert checked >= 25


def test_unknown_malformed_and_revoked_keys_get_401(api):
    for token in ("nep_0123456789abcdef_" + "x" * 43, "not-a-key", "nep_short_x"):
        response = api.get("/v1/models", headers=as_key(api, token))
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_api_key"
    created = api.post("/v1/keys", json={"name": "temp", "scopes": ["register"]}).json()
    assert api.get("/v1/models", headers=as_key(api, created["token"])).status_code == 200
    assert api.post(f"/v1/keys/{created['id']}/revoke").json()["revoked_at"] is not None
    response = api.get("/v1/models", headers=as_key(api, created["token"]))
    assert response.status_code == 401
    keys = {k["id"]: k for k in api.get("/v1/keys").json()}
    assert keys[created["id"]]["revoked_at"] is not None
    assert "token" not in keys[created["id"]] and "secret_hash" not in keys[created["id"]]
    actions = [e["action"] for e in api.get("/v1/audit/events").json()["items"]]
    assert "api_key.created" in actions and "api_key.revoked" in actions


def test_a_key_without_the_scope_gets_403(api, registered):
    submit_only = as_key(api, new_key("acme", "submit"))
    audit_only = as_key(api, new_key("acme", "audit"))
    register_only = as_key(api, new_key("acme", "register"))
    version = registered["version"]
    refused = [
        (audit_only, "POST", "/v1/models", {"json": model_body("other")}, "register"),
        (
            submit_only,
            "POST",
            "/v1/datasets",
            {"json": {"name": "d", "kind": "sklearn_digits"}},
            "register",
        ),
        (
            register_only,
            "POST",
            "/v1/deletion-requests",
            {
                "json": {
                    "model_version_id": version["id"],
                    "dataset_id": "digits",
                    "forget_classes": [3],
                }
            },
            "submit",
        ),
        (submit_only, "GET", version["download_url"], {}, "download"),
        (submit_only, "GET", "/v1/audit/events", {}, "audit"),
        (register_only, "GET", "/v1/audit/verify", {}, "audit"),
        (audit_only, "POST", "/v1/keys", {"json": {"name": "x", "scopes": ["admin"]}}, "admin"),
        (audit_only, "GET", "/v1/keys", {}, "admin"),
    ]
    for headers, method, url, kwargs, scope in refused:
        response = api.request(method, url, headers=headers, **kwargs)
        assert response.status_code == 403, (method, url, response.text)
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["code"] == "insufficient_scope"
        assert response.json()["required_scope"] == scope
    # The scope is enough: the same calls pass with it.
    downloader = as_key(api, new_key("acme", "download"))
    assert api.get(version["download_url"], headers=downloader).status_code == 200
    assert api.get("/v1/audit/events", headers=audit_only).status_code == 200
    assert api.get("/v1/whoami", headers=audit_only).json()["scopes"] == ["audit"]


def test_another_organisations_resources_are_not_found(api, registered):
    owner = api.headers["Authorization"]
    job = submit(api, registered, key="K-1").json()
    other = as_key(api, new_key("globex"))
    model, version = registered["model"], registered["version"]
    hidden = [
        f"/v1/models/{model['id']}",
        f"/v1/models/{model['name']}",
        f"/v1/models/{model['id']}/versions",
        f"/v1/models/{model['id']}/versions/1",
        version["download_url"],
        f"/v1/datasets/{registered['dataset']['id']}",
        "/v1/datasets/digits",
        f"/v1/deletion-requests/{job['id']}",
        f"/v1/deletion-requests/{job['id']}/receipt",
        f"/v1/deletion-requests/{job['id']}/evidence",
        f"/v1/deletion-requests/{job['id']}/versions",
        f"/v1/jobs/{job['job']['id']}",
        f"/v1/jobs/{job['job']['id']}/events",
        f"/v1/jobs/{job['job']['id']}/artifacts",
    ]
    for url in hidden:
        response = api.get(url, headers=other)
        assert response.status_code == 404, (url, response.text)
        assert response.headers["content-type"] == PROBLEM
    assert api.post(f"/v1/jobs/{job['job']['id']}/cancel", headers=other).status_code == 404
    extension = {"months": 1, "reason": "peek"}
    assert (
        api.post(
            f"/v1/deletion-requests/{job['id']}/extensions", json=extension, headers=other
        ).status_code
        == 404
    )
    assert (
        api.get(f"/v1/deletion-requests/{job['id']}/certificate", headers=other).json()["code"]
        == "deletion_request_not_found"
    )
    assert api.get("/v1/deletion-requests/deadlines?within_days=366", headers=other).json() == []
    csv_lines = api.get("/v1/deletion-requests/export.csv", headers=other).text.splitlines()
    assert len(csv_lines) == 1  # the header only
    acme_keys = api.get("/v1/keys", headers={"Authorization": api.headers["Authorization"]})
    first_key = acme_keys.json()[0]["id"]
    assert api.post(f"/v1/keys/{first_key}/revoke", headers=other).status_code == 404
    # Submitting against the other organisation's version or dataset: not found either.
    body = {
        "model_version_id": version["id"],
        "dataset_id": registered["dataset"]["id"],
        "forget_classes": [3],
    }
    response = api.post("/v1/deletion-requests", json=body, headers=other)
    assert response.status_code == 404
    assert response.json()["code"] == "model_version_not_found"
    # Lists and the audit trail show nothing of the other organisation.
    for url in ("/v1/models", "/v1/datasets", "/v1/deletion-requests"):
        assert api.get(url, headers=other).json() == []
    events = api.get("/v1/audit/events", headers=other).json()["items"]
    assert [e["action"] for e in events] == ["organization.created", "api_key.created"]
    assert api.get(f"/v1/audit/events?request_id={job['id']}", headers=other).json()["items"] == []
    # Names are per organisation: the same name does not reveal or collide with the other's.
    assert api.post("/v1/models", json=model_body(), headers=other).status_code == 201
    files = {"file": ("m.safetensors", safetensors_bytes(), "application/octet-stream")}
    other_model = api.get(f"/v1/models/{model['name']}", headers=other).json()
    assert other_model["id"] != model["id"]
    other_version = api.post(f"/v1/models/{model['name']}/versions", files=files, headers=other)
    assert other_version.status_code == 201
    api.post("/v1/datasets", json={"name": "digits", "kind": "sklearn_digits"}, headers=other)
    # The same idempotency key in another organisation is another request, not a replay.
    body |= {"model_version_id": other_version.json()["id"], "dataset_id": "digits"}
    replay = api.post(
        "/v1/deletion-requests", json=body, headers={**other, "Idempotency-Key": "K-1"}
    )
    assert replay.status_code == 202
    assert "Idempotent-Replayed" not in replay.headers
    assert replay.json()["id"] != job["id"]
    mine = api.get(f"/v1/models/{model['name']}", headers={"Authorization": owner}).json()
    assert mine["id"] == model["id"]


def test_the_first_admin_key_comes_from_the_command_line(service_env, capsys):
    from app.cli import main

    assert main(["create-key", "--org", "initech", "--create-org", "--scope", "audit"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("nep_")
    with pytest.raises(SystemExit, match="no organisation"):
        main(["create-key", "--org", "no-such-org"])


def test_production_refuses_a_default_secret_or_a_missing_signing_key(
    service_env, monkeypatch, tmp_path
):
    from app.main import create_app
    from app.signing import create_key_file

    monkeypatch.setenv("NEPENTHE_ENV", "production")
    reset_caches()
    with pytest.raises(RuntimeError, match="NEPENTHE_SECRET_KEY"):
        create_app()
    monkeypatch.setenv("NEPENTHE_SECRET_KEY", "s" * 40)
    monkeypatch.setenv("NEPENTHE_SIGNING_KEY_FILE", str(tmp_path / "absent.pem"))
    reset_caches()
    with pytest.raises(RuntimeError, match="NEPENTHE_SIGNING_KEY_FILE"):
        create_app()
    create_key_file(tmp_path / "absent.pem")
    reset_caches()
    assert create_app().title == "Nepenthe"
