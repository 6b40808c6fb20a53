"""A small synchronous client for the Nepenthe HTTP API (used by the CLI, the demo and tests)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

TERMINAL = {"succeeded", "rejected", "failed", "canceled"}
SUBMIT_TRIES = 3  # an idempotent submission answered 503 is sent this many times in all


class ApiError(Exception):
    """A problem document returned by the API."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.code = str(problem.get("code", f"http_{status}"))
        super().__init__(f"{status} {self.code}: {problem.get('detail', '')}")


class NepentheClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, headers=headers)

    def close(self) -> None:
        self.http.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text}
            raise ApiError(response.status_code, problem)
        return response

    def _json(self, response: httpx.Response) -> Any:
        return self._check(response).json()

    def health(self) -> dict[str, Any]:
        return dict(self._json(self.http.get("/healthz")))

    def register_model(self, **body: Any) -> dict[str, Any]:
        return dict(self._json(self.http.post("/v1/models", json=body)))

    def update_model(self, model: str, **changes: Any) -> dict[str, Any]:
        """Change a model's coalescing or drift budget (None turns one off)."""
        return dict(self._json(self.http.patch(f"/v1/models/{model}", json=changes)))

    def upload_version(
        self, model: str, path: Path, parent_version_id: str | None = None
    ) -> dict[str, Any]:
        form = {"parent_version_id": parent_version_id} if parent_version_id else {}
        with path.open("rb") as fh:
            files = {"file": (path.name, fh, "application/octet-stream")}
            return dict(
                self._json(self.http.post(f"/v1/models/{model}/versions", files=files, data=form))
            )

    def get_version(self, model: str, number: int) -> dict[str, Any]:
        return dict(self._json(self.http.get(f"/v1/models/{model}/versions/{number}")))

    def register_dataset(self, name: str, kind: str, location: str | None = None) -> dict[str, Any]:
        body = {"name": name, "kind": kind, "location": location}
        return dict(self._json(self.http.post("/v1/datasets", json=body)))

    def upload_npz_dataset(self, name: str, path: Path) -> dict[str, Any]:
        with path.open("rb") as fh:
            files = {"file": (path.name, fh, "application/octet-stream")}
            response = self.http.post("/v1/datasets/npz", files=files, data={"name": name})
            return dict(self._json(response))

    def submit_deletion(
        self, idempotency_key: str | None = None, **body: Any
    ) -> tuple[dict[str, Any], str]:
        """Returns the deletion request and the Location of its job. With an idempotency key,
        a 503 (nothing was changed, e.g. the database aborted a deadlocked transaction) is sent
        again after its Retry-After, up to SUBMIT_TRIES times: the key makes that safe."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        for _ in range(SUBMIT_TRIES - 1 if idempotency_key else 0):
            response = self.http.post("/v1/deletion-requests", json=body, headers=headers)
            if response.status_code != 503:
                break
            time.sleep(min(float(response.headers.get("Retry-After", "1")), 5.0))
        else:
            response = self.http.post("/v1/deletion-requests", json=body, headers=headers)
        response = self._check(response)
        return dict(response.json()), response.headers["Location"]

    def get_request(self, request_id: str) -> dict[str, Any]:
        return dict(self._json(self.http.get(f"/v1/deletion-requests/{request_id}")))

    def get_job(self, job_id: str) -> dict[str, Any]:
        return dict(self._json(self.http.get(f"/v1/jobs/{job_id}")))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return dict(self._json(self.http.post(f"/v1/jobs/{job_id}/cancel")))

    def job_events(self, job_id: str) -> list[dict[str, Any]]:
        return list(self._json(self.http.get(f"/v1/jobs/{job_id}/events")))

    def wait(
        self,
        job_id: str,
        timeout: float = 3600.0,
        poll_s: float = 0.5,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job ends; ``on_update`` sees every poll (for a progress bar)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if on_update:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
            time.sleep(poll_s)

    def download(self, download_url: str, target: Path, override_reason: str | None = None) -> str:
        """Stream a checkpoint to ``target``; verifies and returns its SHA-256. An admin
        downloads a superseded version by giving ``override_reason``."""
        digest = hashlib.sha256()
        params = {"override_reason": override_reason} if override_reason else None
        with self.http.stream("GET", download_url, params=params) as response:
            if response.status_code >= 400:
                response.read()
                self._check(response)
            expected = response.headers["X-Checksum-SHA256"]
            tmp = target.with_suffix(target.suffix + ".part")
            with tmp.open("wb") as fh:
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    fh.write(chunk)
        if digest.hexdigest() != expected:
            tmp.unlink(missing_ok=True)
            raise ValueError(f"checksum mismatch: got {digest.hexdigest()}, expected {expected}")
        tmp.replace(target)
        return expected

    def audit(self, page_size: int = 200, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every audit event matching ``filters``, following the pages."""
        params = {k: v for k, v in filters.items() if v is not None}
        params["limit"] = page_size
        while True:
            page = self._json(self.http.get("/v1/audit/events", params=params))
            yield from page["items"]
            if not page["next_page_token"]:
                return
            params["page_token"] = page["next_page_token"]

    # Keys and identity

    def whoami(self) -> dict[str, Any]:
        return dict(self._json(self.http.get("/v1/whoami")))

    def create_key(self, name: str, scopes: list[str]) -> dict[str, Any]:
        body = {"name": name, "scopes": scopes}
        return dict(self._json(self.http.post("/v1/keys", json=body)))

    def list_keys(self) -> list[dict[str, Any]]:
        return list(self._json(self.http.get("/v1/keys")))

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        return dict(self._json(self.http.post(f"/v1/keys/{key_id}/revoke")))

    # The auditor's side

    def list_requests(
        self, filters: dict[str, Any], page_size: int = 200
    ) -> Iterator[dict[str, Any]]:
        """Every deletion request matching ``filters``, following the Link headers."""
        params = {k: v for k, v in filters.items() if v is not None}
        url: str | None = "/v1/deletion-requests"
        query: dict[str, Any] | None = {**params, "limit": page_size}
        while url:
            response = self._check(self.http.get(url, params=query))
            yield from response.json()
            url = response.links.get("next", {}).get("url")
            query = None  # the next link carries the query

    def deadlines(self, within_days: float = 7) -> list[dict[str, Any]]:
        params = {"within_days": within_days}
        return list(self._json(self.http.get("/v1/deletion-requests/deadlines", params=params)))

    def extend(self, request_id: str, months: int, reason: str) -> dict[str, Any]:
        body = {"months": months, "reason": reason}
        url = f"/v1/deletion-requests/{request_id}/extensions"
        return dict(self._json(self.http.post(url, json=body)))

    def samples(
        self, dataset: str, split: str | None = None, label: int | None = None, limit: int = 100
    ) -> Iterator[dict[str, Any]]:
        """Up to ``limit`` of the dataset's samples (id, split, label, class_name), page by
        page."""
        params: dict[str, Any] = {"limit": min(limit, 1000)}  # a page per 1,000
        params |= {k: v for k, v in (("split", split), ("label", label)) if v is not None}
        left = limit
        while left > 0:
            page = self._json(self.http.get(f"/v1/datasets/{dataset}/samples", params=params))
            yield from page["items"][:left]
            left -= len(page["items"])
            if not page["next_page_token"]:
                return
            params["page_token"] = page["next_page_token"]

    def retry(self, request_id: str, reason: str, **changes: Any) -> dict[str, Any]:
        """Run a rejected or failed request again; ``changes``: method, params, acceptance,
        budget_epochs (left out: the request's own)."""
        body = {"reason": reason, **changes}
        url = f"/v1/deletion-requests/{request_id}/retry"
        return dict(self._json(self.http.post(url, json=body)))

    def close_request(self, request_id: str, reason: str) -> dict[str, Any]:
        url = f"/v1/deletion-requests/{request_id}/close"
        return dict(self._json(self.http.post(url, json={"reason": reason})))

    def request_document(self, request_id: str, kind: str) -> dict[str, Any]:
        """``kind``: receipt, certificate or evidence (signed JSON documents)."""
        return dict(self._json(self.http.get(f"/v1/deletion-requests/{request_id}/{kind}")))

    def request_versions(self, request_id: str) -> list[dict[str, Any]]:
        return list(self._json(self.http.get(f"/v1/deletion-requests/{request_id}/versions")))

    def versions_with_content(self, sha256: str) -> list[dict[str, Any]]:
        """Every version with the weights of the checkpoint file whose SHA-256 this is."""
        response = self.http.get("/v1/model-versions", params={"sha256": sha256})
        return list(self._json(response))

    def export_csv(self, target: Path, **filters: Any) -> None:
        params = {k: v for k, v in filters.items() if v is not None}
        with self.http.stream("GET", "/v1/deletion-requests/export.csv", params=params) as r:
            if r.status_code >= 400:
                r.read()
                self._check(r)
            with target.open("wb") as fh:
                for chunk in r.iter_bytes():
                    fh.write(chunk)

    def audit_verify(
        self, anchor_seq: int | None = None, anchor_hash: str | None = None
    ) -> dict[str, Any]:
        params = {"anchor_seq": anchor_seq, "anchor_hash": anchor_hash} if anchor_seq else {}
        return dict(self._json(self.http.get("/v1/audit/verify", params=params)))

    def audit_head(self) -> dict[str, Any]:
        return dict(self._json(self.http.get("/v1/audit/head")))

    def signing_key(self) -> dict[str, Any]:
        return dict(self._json(self.http.get("/v1/signing-key")))
