"""The web console in a real browser (Debian's Chromium) against real API and worker processes:
sign in, submit, watch a job, read its evidence, check signatures in the page, the limits of a
key's scopes and organisation, CSRF, sign-out."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from app.signing import canonical_json
from client.api import NepentheClient
from client.local import create_admin_key
from tests.conftest import ROOT
from tests.e2e.test_service import register
from tests.helpers import SMALL_DATA_PARAMS

pytestmark = pytest.mark.e2e
TIMEOUT_MS = 120_000


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    opened = context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(str(error)))
    opened.on("dialog", lambda dialog: dialog.accept())  # "Cancel this job?": yes
    yield opened
    context.close()
    assert not problems, f"the page's scripts failed: {problems}"


def sign_in(page: Page, url: str, key: str, then: str = "/console/requests") -> None:
    page.goto(url + then)
    expect(page).to_have_url(re.compile(r"/console/sign-in\?next="))
    page.fill("#api_key", key)
    page.click("main button[type=submit]")
    expect(page).to_have_url(url + then)


def key_with(client: NepentheClient, *scopes: str) -> str:
    return str(client.create_key(f"console-{'-'.join(scopes)}", list(scopes))["token"])


def slow_request(client: NepentheClient, reg: dict[str, Any]) -> dict[str, Any]:
    """A UNSIR job whose noise phase runs long enough to be watched and canceled."""
    request, _ = client.submit_deletion(
        idempotency_key=str(uuid.uuid4()),
        model_version_id=reg["version"]["id"],
        dataset_id=reg["dataset"]["id"],
        forget_classes=[3],
        method="unsir",
        params={**SMALL_DATA_PARAMS, "noise_steps": 20_000, "noise_batch": 8},
    )
    return request


@pytest.mark.parametrize("service_env", ["production"], indirect=True)
def test_an_officer_submits_a_request_watches_it_finish_and_checks_its_certificate(
    service, client, page, tmp_path
):
    reg = register(client, tmp_path)
    sign_in(page, service.url, key_with(client, "submit", "audit"))
    expect(page.get_by_role("link", name="Audit trail")).to_be_visible()

    page.click("text=New request")
    page.select_option("#model_version_id", reg["version"]["id"])
    page.fill("#forget_classes", "3, eleven")
    page.click("main button[type=submit]")
    # Refused as the API refuses it, with its problem code, and nothing was kept.
    expect(page.get_by_test_id("problem")).to_contain_text("unknown_class")
    assert list(client.list_requests({})) == []

    page.fill("#forget_classes", "3, 8")
    page.fill("#caller_reference", "DSR-CONSOLE-1")
    page.check("input[name=reference]")
    page.click("main button[type=submit]")
    expect(page).to_have_url(re.compile(r"/console/requests/[0-9a-f-]{36}$"))
    request_id = page.url.rsplit("/", 1)[1]
    expect(page.get_by_test_id("forget")).to_contain_text("3, 8")

    # The page follows the job by itself and shows the evidence once it ends.
    expect(page.get_by_test_id("gate")).to_have_text("passed", timeout=TIMEOUT_MS)
    expect(page.get_by_test_id("status")).to_have_text("succeeded")
    checks = page.get_by_test_id("checks").locator("tbody tr")
    expect(checks).to_have_count(5)  # the class defaults, the reference gap included
    for row in checks.all():
        expect(row.locator("td").last).to_have_text("passed")
    per_class = page.get_by_test_id("plot-per-class")
    bars = per_class.locator("rect > title")  # one bar per class and model, named and valued
    expect(bars).to_have_count(30)
    expect(bars.filter(has_text="3, Unlearned")).to_have_text("3, Unlearned: 0.0%")
    expect(bars.filter(has_text="8, Retrained reference")).to_have_text(
        "8, Retrained reference: 0.0%"
    )
    expect(per_class.locator("text.forget-label")).to_have_text(["3", "8"])
    expect(page.get_by_test_id("plot-membership").locator("rect.band")).to_have_count(1)
    expect(page.get_by_test_id("plot-cost")).to_contain_text("of a retrain")

    page.click("text=Receipt, certificate and evidence")
    for doc in ("receipt", "certificate"):
        expect(page.get_by_test_id(f"{doc}-verdict")).to_contain_text("valid", timeout=20_000)
        expect(page.get_by_test_id(f"{doc}-verdict")).to_have_class(re.compile("pass"))
    certificate = page.locator("section[data-doc=certificate] textarea")
    signed = json.loads(certificate.input_value())
    assert signed["payload"]["request_id"] == request_id
    # One figure changed by a hair: the browser, not the server, finds the signature broken.
    altered = certificate.input_value().replace(
        '"forget_accuracy": 0.0', '"forget_accuracy": 0.01', 1
    )
    assert altered != certificate.input_value()
    certificate.fill(altered)
    page.click("section[data-doc=certificate] button")
    expect(page.get_by_test_id("certificate-verdict")).to_contain_text("INVALID")

    with page.expect_download() as download:
        page.click("text=download the export")
    exported = json.loads(Path(download.value.path()).read_text())
    assert exported["payload"]["request"]["id"] == request_id

    page.goto(service.url + "/console/audit")
    expect(page.get_by_test_id("chain")).to_contain_text("intact", timeout=20_000)
    expect(page.get_by_test_id("events")).to_contain_text("console.signed_in")
    with page.expect_download() as download:
        page.click("text=Export CSV")
    rows = Path(download.value.path()).read_text().splitlines()
    assert rows[0].startswith("seq,at,action,actor")
    assert any(",job.succeeded," in r for r in rows)

    page.click("text=Sign out")
    expect(page).to_have_url(re.compile(r"/console/sign-in\?signed_out=1"))
    page.goto(service.url + f"/console/requests/{request_id}")
    expect(page).to_have_url(re.compile(r"/console/sign-in\?next="))


def test_a_running_job_updates_in_place_and_can_be_canceled_from_the_console(
    service, client, page, tmp_path
):
    reg = register(client, tmp_path)
    request = slow_request(client, reg)
    sign_in(page, service.url, key_with(client, "submit"), f"/console/requests/{request['id']}")
    page.evaluate("window.notReloaded = true")
    percent = page.locator("#progress [data-field=percent]")
    expect(page.locator("#progress [data-field=phase]")).to_have_text("noise", timeout=TIMEOUT_MS)
    first = percent.text_content()
    expect(percent).not_to_have_text(first or "", timeout=TIMEOUT_MS)
    expect(page.get_by_test_id("status")).to_have_text("running")
    expect(page.locator("#attempts")).to_have_text("1")
    assert page.evaluate("window.notReloaded") is True  # updated without a reload

    page.click("text=Cancel the job")
    expect(page.get_by_test_id("status")).to_have_text("canceled", timeout=TIMEOUT_MS)
    assert client.get_job(request["job"]["id"])["status"] == "canceled"


def test_a_key_sees_only_its_scopes_and_its_organisation(service, client, page, tmp_path):
    reg = register(client, tmp_path)
    request = slow_request(client, reg)
    client.cancel_job(request["job"]["id"])

    sign_in(page, service.url, key_with(client, "submit"))
    expect(page.get_by_role("link", name="Audit trail")).to_have_count(0)
    page.goto(service.url + "/console/audit")
    expect(page.get_by_test_id("code")).to_have_text("insufficient_scope")
    expect(page.get_by_test_id("error")).to_contain_text("audit")
    page.goto(service.url + "/console/models/" + reg["model"]["id"])
    expect(page.get_by_test_id("version-1")).not_to_contain_text("download")  # no download scope

    page.context.clear_cookies()
    sign_in(page, service.url, key_with(client, "audit"))
    expect(page.get_by_role("link", name="New request")).to_have_count(0)
    page.goto(service.url + "/console/requests/new")
    expect(page.get_by_test_id("code")).to_have_text("insufficient_scope")

    # Another organisation's admin: the request is not found, the list does not hold it.
    other = create_admin_key(service.env, ROOT, "other-org")
    page.context.clear_cookies()
    sign_in(page, service.url, other)
    expect(page.locator("main")).not_to_contain_text(request["id"][:8])
    response = page.goto(service.url + f"/console/requests/{request['id']}")
    assert response is not None and response.status == 404
    expect(page.get_by_test_id("code")).to_have_text("deletion_request_not_found")


def test_forms_without_the_session_csrf_token_or_cookie_change_nothing(
    service, client, page, tmp_path
):
    reg = register(client, tmp_path)
    request = slow_request(client, reg)
    job_id = request["job"]["id"]
    sign_in(page, service.url, key_with(client, "submit"), f"/console/requests/{request['id']}")

    # The page's own cancel form, its token replaced: refused, the job left alone.
    page.locator("form[action$=cancel] input[name=csrf_token]").evaluate("e => e.value = 'forged'")
    page.click("text=Cancel the job")
    expect(page.get_by_test_id("code")).to_have_text("csrf_token_invalid")
    assert client.get_job(job_id)["cancel_requested"] is False

    # Another site's form: SameSite=Strict keeps the session cookie out of its request.
    page.goto("data:text/html,<p>elsewhere</p>")
    page.set_content(
        f'<form method="post" action="{service.url}/console/jobs/{job_id}/cancel">'
        '<input name="csrf_token" value="guess"><button>go</button></form>'
    )
    with page.expect_navigation():
        page.click("button")
    expect(page).to_have_url(re.compile(r"/console/sign-in\?next="))
    assert client.get_job(job_id)["cancel_requested"] is False
    client.cancel_job(job_id)


def test_the_page_spells_json_as_the_server_signs_it(service, page):
    """verify.js rebuilds the signed bytes in the browser; they must be Python's, byte for byte."""
    page.goto(service.url + "/console/sign-in")
    page.add_script_tag(url="/console/static/verify.js")
    tricky = {
        "floats": [1.0, 0.1, 1e-05, 0.0001, 1e16, 1e15, -2.5e-07, 123.456, 1 / 3, -0.0],
        "ints": [0, -7, 123456789012345678901234567890],
        "text": 'é 😀 "quoted" back\\slash \n\t\u0001 \u007f',
        "nested": {"b": [True, False, None], "a": {"z": 1, "é": 2, "A": 3}},
    }
    served = json.dumps(tricky)  # as the API writes its JSON (repr of floats)
    in_browser = page.evaluate("text => canonical(parse(text))", served)
    assert in_browser.encode() == canonical_json(json.loads(served))


def test_an_image_to_image_job_shows_its_completions_to_a_key_that_may_download_them(
    service, client, page, tmp_path
):
    from client.demo_i2i import SMALL_MODEL_PARAMS
    from tests.e2e.test_i2i import register as register_i2i
    from tests.e2e.test_i2i import submit as submit_i2i

    reg = register_i2i(client, tmp_path)
    request = submit_i2i(client, reg, forget_classes=["3", "8"], params=SMALL_MODEL_PARAMS)
    job = client.wait(request["job"]["id"], timeout=600)
    assert job["status"] in ("succeeded", "rejected"), job["error"]

    sign_in(page, service.url, key_with(client, "download"), f"/console/requests/{request['id']}")
    expect(page.get_by_test_id("checks").locator("tbody tr")).to_have_count(2)  # the PSNR checks
    expect(page.get_by_test_id("plot-psnr").locator("svg rect")).to_have_count(4)
    grid = page.get_by_test_id("grid").locator("img")
    expect(grid).to_be_visible()
    assert page.evaluate("img => img.complete && img.naturalWidth > 0", grid.element_handle())

    def downloads() -> int:
        return sum(e["action"] == "job_artifact.downloaded" for e in client.audit())

    assert downloads() == 1, "showing the grid is a download, audited as one"
    page.reload()
    expect(grid).to_be_visible()
    assert downloads() == 1, "the browser kept it: looking again is not another download"

    page.context.clear_cookies()
    sign_in(page, service.url, key_with(client, "submit"), f"/console/requests/{request['id']}")
    expect(page.get_by_test_id("plot-psnr")).to_be_visible()
    expect(page.locator("main")).to_contain_text("Showing the grid needs the download scope.")
