"""Console sign-in and its sessions, over HTTP in-process on both backends: the cookie's
attributes, CSRF, expiry, sign-out, revocation, the body guard, error pages, security headers."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from client.databases import reset_caches
from tests.conftest import BACKENDS, new_key

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)


@pytest.fixture
def browser(api: TestClient) -> Iterator[TestClient]:
    """The same app, as a browser reaches it: no Authorization header, cookies kept."""
    from app.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield client


def login_token(browser: TestClient) -> str:
    page = browser.get("/console/sign-in")
    assert page.status_code == 200
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def sign_in(browser: TestClient, key: str, next_page: str = "/console/models") -> httpx.Response:
    form = {"api_key": key, "csrf_token": login_token(browser), "next": next_page}
    return browser.post("/console/sign-in", data=form, follow_redirects=False)


def sessions() -> list[Any]:
    from app.db import session_scope
    from app.orm import ConsoleSession

    with session_scope(read_only=True) as session:
        rows = session.scalars(select(ConsoleSession)).all()
        session.expunge_all()
        return list(rows)


def actions(api: TestClient) -> list[str]:
    return [e["action"] for e in api.get("/v1/audit/events").json()["items"]]


def is_sign_in_redirect(response: httpx.Response) -> bool:
    return response.status_code == 303 and response.headers["location"].startswith(
        "/console/sign-in?next="
    )


def test_signing_in_sets_a_strict_http_only_cookie_and_keeps_only_its_hash(api, browser):
    key = new_key("acme", "submit")
    response = sign_in(browser, key)
    assert response.status_code == 303 and response.headers["location"] == "/console/models"
    cookie = next(c for c in response.headers.get_list("set-cookie") if "nepenthe_console=" in c)
    token = cookie.split("=", 1)[1].split(";", 1)[0]
    attributes = cookie.lower()
    assert "httponly" in attributes and "samesite=strict" in attributes
    assert "path=/console" in attributes and "max-age=28800" in attributes
    assert "secure" not in attributes  # plain HTTP on the development default
    [row] = sessions()
    assert row.id == hashlib.sha256(token.encode()).hexdigest() != token
    assert browser.get("/console/models").status_code == 200
    assert "console.signed_in" in actions(api)


def test_outside_development_the_cookie_is_secure(service_env, monkeypatch):
    monkeypatch.setenv("NEPENTHE_ENV", "testing")
    reset_caches()
    from app.main import create_app

    app = create_app()
    with TestClient(app, base_url="https://testserver", raise_server_exceptions=False) as browser:
        response = sign_in(browser, new_key("acme"))
    assert response.status_code == 303
    cookie = next(c for c in response.headers.get_list("set-cookie") if "nepenthe_console=" in c)
    assert "secure" in cookie.lower()


def test_a_wrong_key_or_a_missing_form_token_signs_nobody_in(api, browser):
    wrong = sign_in(browser, "nep_0123456789abcdef_" + "x" * 43)
    assert wrong.status_code == 401 and "unknown, malformed or revoked" in wrong.text
    assert "nepenthe_console=" not in wrong.headers.get("set-cookie", "")
    form = {"api_key": new_key("acme"), "csrf_token": "made-up", "next": ""}
    forged = browser.post("/console/sign-in", data=form, follow_redirects=False)
    assert forged.status_code == 403
    assert 'data-testid="code">csrf_token_invalid<' in forged.text
    assert sessions() == []


def test_a_session_ends_at_expiry_at_sign_out_and_when_its_key_is_revoked(api, browser):
    from app.db import session_scope
    from app.orm import ConsoleSession, utcnow

    sign_in(browser, new_key("acme"))
    assert browser.get("/console/requests").status_code == 200
    with session_scope() as session:
        session.execute(update(ConsoleSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert is_sign_in_redirect(browser.get("/console/requests", follow_redirects=False))

    made = api.post("/v1/keys", json={"name": "officer", "scopes": ["submit"]}).json()
    sign_in(browser, made["token"])
    assert browser.get("/console/requests").status_code == 200
    api.post(f"/v1/keys/{made['id']}/revoke")
    assert is_sign_in_redirect(browser.get("/console/requests", follow_redirects=False))

    sign_in(browser, new_key("acme"))
    kept = browser.cookies.get("nepenthe_console", path="/console")
    page = browser.get("/console/requests").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf is not None
    out = browser.post("/console/sign-out", data={"csrf_token": csrf.group(1)})
    assert out.url.path == "/console/sign-in" and "You are signed out." in out.text
    assert [row.ended_at is not None for row in sessions()].count(True) == 1
    browser.cookies.set("nepenthe_console", kept, path="/console")  # the old cookie, replayed
    assert is_sign_in_redirect(browser.get("/console/requests", follow_redirects=False))
    assert "console.signed_out" in actions(api)


def test_console_forms_need_a_session_before_their_body_is_read(api, browser):
    posted = browser.post(
        "/console/requests",
        data={"csrf_token": "x"},
        headers={"Referer": "http://testserver/console/requests/new"},
        follow_redirects=False,
    )
    # Refused before the body is read; the form's page comes back after signing in.
    assert posted.status_code == 303
    assert posted.headers["location"] == "/console/sign-in?next=%2Fconsole%2Frequests%2Fnew"
    huge = browser.post(
        "/console/sign-in",
        content=b"api_key=" + b"a" * 20_000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert huge.status_code == 413
    # Signed in, a console form is still no upload: the API's body limit, multipart or not.
    sign_in(browser, new_key("acme"))
    files = {"file": ("big.bin", b"0" * (5 * 1024**2), "application/octet-stream")}
    assert browser.post("/console/sign-out", files=files).status_code == 413


def test_a_sign_in_form_left_open_too_long_is_shown_again_not_refused_blankly(api, browser):
    login_token(browser)
    browser.cookies.delete("nepenthe_console_login", path="/console/sign-in")  # an hour later
    form = {"api_key": new_key("acme"), "csrf_token": "stale", "next": ""}
    again = browser.post("/console/sign-in", data=form, follow_redirects=False)
    assert again.status_code == 403
    assert 'data-testid="code">csrf_token_invalid<' in again.text
    assert 'name="api_key"' in again.text  # the form again, with a fresh token
    assert sign_in(browser, form["api_key"]).status_code == 303


def test_ended_and_expired_sessions_are_purged_a_day_later(api, browser):
    from app.db import session_scope
    from app.orm import ConsoleSession, utcnow

    sign_in(browser, new_key("acme"))
    with session_scope() as session:
        session.execute(update(ConsoleSession).values(expires_at=utcnow() - timedelta(days=2)))
    browser.cookies.clear()
    sign_in(browser, new_key("acme"))
    assert len(sessions()) == 1  # the new one; the audit log keeps both sign-ins
    assert actions(api).count("console.signed_in") == 2


def test_the_submit_form_takes_names_and_ascii_indices_only(api, browser, registered):
    sign_in(browser, new_key("acme", "submit"))
    page = browser.get("/console/requests/new").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf is not None
    form = {
        "csrf_token": csrf.group(1),
        "model_version_id": registered["version"]["id"],
        "dataset_id": registered["dataset"]["id"],
        "forget_kind": "classes",
        "forget_classes": "²",  # a digit to str.isdigit, not to the API
        "idempotency_key": "form-1",
    }
    refused = browser.post("/console/requests", data=form)
    assert refused.status_code == 422
    assert "unknown_class" in refused.text and "no class named" in refused.text
    empty = browser.post("/console/requests", data={**form, "forget_classes": " , "})
    assert empty.status_code == 422 and "name the classes to forget" in empty.text
    assert api.get("/v1/deletion-requests").json() == []


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "https://evil.example/", "/console\\@evil.example", "/v1/keys"]
)
def test_the_page_after_sign_in_is_always_one_of_the_console(api, browser, target):
    response = sign_in(browser, new_key("acme"), next_page=target)
    assert response.headers["location"] == "/console/requests"


def test_pages_cannot_be_framed_cached_or_made_to_run_other_scripts(api, browser):
    for path in ("/console/sign-in", "/console/static/console.css"):
        headers = browser.get(path).headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["cache-control"] == "no-store"


def test_problems_are_pages_with_the_api_codes(api, browser, registered):
    sign_in(browser, new_key("acme", "submit"))
    cases = [
        ("/console/requests/does-not-exist", 404, "deletion_request_not_found"),
        ("/console/models/does-not-exist", 404, "model_not_found"),
        ("/console/no-such-page", 404, "not_found"),
        ("/console/requests?status=bogus", 422, "unprocessable"),
        ("/console/audit", 403, "insufficient_scope"),
        (
            f"/console/models/{registered['model']['id']}/versions/1/checkpoint",
            403,
            "insufficient_scope",
        ),
    ]
    for path, status, code in cases:
        page = browser.get(path)
        assert page.status_code == status, path
        assert page.headers["content-type"].startswith("text/html"), path
        assert f'data-testid="code">{code}<' in page.text, path
        assert "X-Request-ID" in page.headers
        assert "Sign out" in page.text, path  # still signed in: the navigation stays
    # The pages' scripts get the API's problem documents, not pages.
    api_side = browser.get("/console/api/jobs/does-not-exist")
    assert api_side.status_code == 404 and api_side.json()["code"] == "job_not_found"


def test_the_audit_csv_keeps_spreadsheet_formulas_inert(api, browser, registered):
    body = {
        "model_version_id": registered["version"]["id"],
        "dataset_id": registered["dataset"]["id"],
        "forget_classes": [3],
        "caller_reference": '=HYPERLINK("http://evil.example")',
    }
    assert api.post("/v1/deletion-requests", json=body).status_code == 202
    sign_in(browser, new_key("acme", "audit"))
    csv = browser.get("/console/audit/export.csv?action=deletion_request.created")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.splitlines()
    assert lines[0].startswith("seq,at,action,actor") and len(lines) == 2
    assert "'=HYPERLINK" in lines[1]


def test_the_audit_page_finds_a_model_by_name_and_says_so_when_there_is_none(
    api, browser, registered
):
    sign_in(browser, new_key("acme", "audit"))
    by_name = browser.get(f"/console/audit?model_id={registered['model']['name']}")
    assert by_name.status_code == 200 and "model_version.uploaded" in by_name.text
    unknown = browser.get("/console/audit?model_id=no-such-model")
    assert unknown.status_code == 404 and 'data-testid="code">model_not_found<' in unknown.text
