"""Screenshots of the web console's main pages, in docs/console/: run the classifier demo, then
photograph the console over its requests in Debian's Chromium (scripts/browser.sh).

    .venv/bin/python scripts/console_screenshots.py
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client.api import NepentheClient  # noqa: E402
from client.demo import run_demo  # noqa: E402
from client.local import LocalService  # noqa: E402

OUT = ROOT / "docs" / "console"
CHROMIUM = os.environ.get("NEPENTHE_TEST_CHROMIUM", "/usr/bin/chromium")


def shoot(service: LocalService) -> None:
    client = NepentheClient(service.url, service.admin_key)
    requests = list(client.list_requests({}))
    classes = next(r for r in requests if r["forget_classes"])
    model_id = classes["model_id"]
    open_request = running_request(client, classes)
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{service.url}/console/sign-in")
        save(page, "sign-in")
        page.fill("#api_key", service.admin_key)
        page.click("main button[type=submit]")
        page.wait_for_url("**/console/requests")
        save(page, "requests")
        page.goto(f"{service.url}/console/requests/{classes['id']}")
        save(page, "request")
        page.goto(f"{service.url}/console/requests/{open_request['id']}")
        page.wait_for_selector("#progress [data-field=phase]:not(:text('—'))", timeout=60_000)
        save(page, "running", full_page=False)
        page.goto(f"{service.url}/console/requests/{classes['id']}/evidence")
        page.wait_for_selector("[data-testid=certificate-verdict].pass", timeout=20_000)
        save(page, "evidence")
        page.goto(f"{service.url}/console/models/{model_id}")
        save(page, "lineage")
        page.goto(f"{service.url}/console/audit")
        page.wait_for_selector("#chain.pass, #chain.fail", timeout=20_000)
        save(page, "audit", full_page=False)  # the first screen: a log is long
        page.goto(f"{service.url}/console/requests/new")
        save(page, "new-request")
        page.goto(f"{service.url}/console/requests/no-such-request")
        save(page, "error")
        browser.close()
    client.cancel_job(open_request["job"]["id"])
    client.close()


def running_request(client: NepentheClient, done: dict[str, Any]) -> dict[str, Any]:
    """An open request on the version the demo produced, its deadline extended, its job
    running long enough to be photographed: the statutory clock and live progress."""
    version = client.http.get(f"/v1/models/{done['model_id']}/versions").json()[-1]
    request, _ = client.submit_deletion(
        idempotency_key=str(uuid.uuid4()),
        model_version_id=version["id"],
        dataset_id=done["dataset_id"],
        forget_classes=["5"],
        method="unsir",
        params={"noise_steps": 1_000_000, "noise_batch": 8},
        caller_reference="DSR-2026-0051",
    )
    client.extend(request["id"], 1, "the data subject's account spans two models")
    return request


def save(page: Page, name: str, full_page: bool = True) -> None:
    path = OUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    run_demo(ROOT / "var" / "console-shots", then=shoot)
