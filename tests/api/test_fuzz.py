"""Property-based fuzzing of the whole OpenAPI schema: no generated request gets a 5xx, and every
4xx is an RFC 9457 problem document.

Schemathesis builds requests (valid and invalid) from the schema the app serves, in-process over
ASGI. Resources are seeded first and path parameters are drawn partly from their real ids, so the
operations get past their 404s and into validation and the services.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, BaseSchema, Case, GenerationMode
from schemathesis.core.result import Ok
from schemathesis.python import asgi

from tests.conftest import new_key

PROBLEM = "application/problem+json"
# Cases per operation and generation mode (valid, invalid): some 3,200 requests and 30-85 s per
# backend on two shared cores. Raise it for a deeper local run: NEPENTHE_FUZZ_EXAMPLES=200.
MAX_EXAMPLES = int(os.environ.get("NEPENTHE_FUZZ_EXAMPLES", "40"))
# Schemathesis' strategies for whole requests are large and filtered by design.
SLOW_STRATEGIES = [
    HealthCheck.too_slow,
    HealthCheck.filter_too_much,
    HealthCheck.data_too_large,
    HealthCheck.large_base_example,
]
PUBLIC_ADDRESS = "93.184.216.34"  # what every webhook host "resolves" to: the test stays offline

pytestmark = pytest.mark.parametrize("service_env", ["embedded", "production"], indirect=True)


class OfflineSocket:
    """The socket module as app.webhooks.service sees it, with a resolver that never leaves the
    machine: numeric hosts are read as such, every name "resolves" to one public address. The
    webhook address checks still run; nothing reaches DNS. (Only that module's name is patched:
    Redis and the rest keep the real resolver.)"""

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    @staticmethod
    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        kwargs["flags"] = socket.AI_NUMERICHOST
        try:
            return socket.getaddrinfo(host, port, *args, **kwargs)
        except (socket.gaierror, UnicodeError):
            public = (PUBLIC_ADDRESS, 0)
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", public)]


def seed_resources(api: TestClient, registered: dict[str, Any]) -> dict[str, list[Any]]:
    """Real ids per path parameter name: the seeded model, version, dataset, a deletion request
    with its job, a webhook and a spare key (the fuzzer may revoke that one, not its own)."""
    model, dataset = registered["model"], registered["dataset"]
    body = {
        "model_version_id": registered["version"]["id"],
        "dataset_id": dataset["id"],
        "forget_classes": [3],
    }
    deletion = api.post("/v1/deletion-requests", json=body)
    assert deletion.status_code == 202, deletion.text
    hook = api.post("/v1/webhooks", json={"url": "https://hooks.example.com/nepenthe"})
    assert hook.status_code == 201, hook.text
    spare = api.get("/v1/whoami", headers={"Authorization": f"Bearer {new_key('acme')}"})
    request = deletion.json()
    return {
        "model_ref": [model["id"], model["name"]],
        "number": [1, 2],
        "ref": [dataset["id"], dataset["name"]],
        "request_id": [request["id"]],
        "job_id": [request["job"]["id"]],
        "name": ["report.json", "model.safetensors"],
        "webhook_id": [hook.json()["id"]],
        "key_id": [spare.json()["key_id"]],
    }


def with_real_ids(pools: dict[str, list[Any]]) -> Any:
    """A ``before_generate_path_parameters`` hook: half the cases take real ids instead."""

    def before_generate_path_parameters(context: Any, strategy: Any) -> Any:
        names = [p.name for p in context.operation.path_parameters]
        if not all(n in pools for n in names):
            return strategy
        real = st.fixed_dictionaries({n: st.sampled_from(pools[n]) for n in names})
        return st.one_of(strategy, real)

    return before_generate_path_parameters


@pytest.fixture
def fuzz_schema(
    api: TestClient, registered: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[BaseSchema]:
    """The schema the app serves, with path parameters partly drawn from seeded ids."""
    monkeypatch.setattr("app.webhooks.service.socket", OfflineSocket())
    pools = seed_resources(api, registered)
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    schema.hook(with_real_ids(pools))
    yield schema
    asgi.shutdown_lifespans()  # schemathesis keeps each app's lifespan running until told


def test_no_5xx_and_every_4xx_is_a_problem(fuzz_schema: BaseSchema, api: TestClient) -> None:
    auth = {"Authorization": api.headers["Authorization"]}
    operations = operations_of(fuzz_schema)
    statuses: dict[str, Counter[int]] = {}
    failures: list[str] = []
    for operation in operations:
        seen = statuses.setdefault(operation.label, Counter())
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz(operation, mode, auth, seen)
            except AssertionError as exc:  # every operation runs; all failures are reported
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
    # The seeding must work, or the run only ever tests 404s and schema validation.
    answered = [label for label, seen in statuses.items() if any(200 <= s < 300 for s in seen)]
    assert len(answered) >= len(operations) * 2 // 3, f"few operations answered 2xx: {statuses}"


# Limits low enough that generated requests cross them: bodies, uploads, submissions a minute,
# queued jobs and stored bytes (set after the seeding, which needs room).
TIGHT_LIMITS = {
    "NEPENTHE_MAX_BODY_BYTES": "1024",
    "NEPENTHE_MAX_UPLOAD_BYTES": "4096",
    "NEPENTHE_QUOTA_SUBMISSIONS_PER_MINUTE": "1",
    "NEPENTHE_QUOTA_QUEUED_JOBS": "3",
    "NEPENTHE_QUOTA_STORED_BYTES": "1",
}


def test_limits_are_answered_with_problems_never_5xx(
    fuzz_schema: BaseSchema, api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writing operations again, under limits low enough for generated requests to cross:
    each refusal is a problem document, and none turns into a 5xx."""
    from client.databases import reset_caches

    for name, value in TIGHT_LIMITS.items():
        monkeypatch.setenv(name, value)
    reset_caches()
    auth = {"Authorization": api.headers["Authorization"]}
    seen: Counter[int] = Counter()
    failures: list[str] = []
    for operation in operations_of(fuzz_schema):
        if operation.method.upper() not in ("POST", "PUT", "PATCH", "DELETE"):
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz(operation, mode, auth, seen, examples=max(5, MAX_EXAMPLES // 4))
            except AssertionError as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
    # Generated bodies name made-up versions, so submissions stop at their 404 before the
    # quotas (tests/api/test_quotas.py reaches those); the size limits are crossed here.
    assert seen[413], f"no limit was ever reached: {seen}"


def operations_of(schema: BaseSchema) -> list[APIOperation]:
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the app serves an invalid operation: {result.err()}"
        operations.append(result.ok())
    return operations


def fuzz(
    operation: APIOperation,
    mode: GenerationMode,
    auth: dict[str, str],
    seen: Counter[int],
    examples: int = MAX_EXAMPLES,
) -> None:
    """Up to MAX_EXAMPLES cases of ``mode`` against one operation; the first failure is shrunk
    and raised as an AssertionError. Derandomized, without an example database: CI draws the
    same cases on every run."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=SLOW_STRATEGIES,
    )
    def check(case: Case) -> None:
        try:
            response = case.call(headers=auth)
        except Exception as exc:
            # Starlette answers an unhandled exception with the 500 handler and then re-raises
            # it, which the in-process transport passes on: that is the 5xx this test is after.
            raise AssertionError(f"raised {exc!r} (a 500)\n{case.as_curl_command()}") from exc
        seen[response.status_code] += 1
        assert response.status_code < 500, f"{case.as_curl_command()}\n{response.text[:2000]}"
        if response.status_code >= 400:
            assert_problem_document(response)

    check()


def assert_problem_document(response: Any) -> None:
    media_type = response.headers.get("content-type", [""])[0].split(";")[0].strip()
    assert media_type == PROBLEM, f"{response.status_code} with {media_type!r}"
    body = response.json()
    for field in ("code", "status", "title", "detail"):
        assert field in body, f"the problem document lacks {field!r}: {body}"
    assert body["status"] == response.status_code
