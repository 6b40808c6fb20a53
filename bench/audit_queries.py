"""Audit query latency at 100k events on PostgreSQL, through the real API in-process.

    .venv/bin/python bench/audit_queries.py --events 100000 --write-docs   # minutes on 2 cores
    .venv/bin/python bench/audit_queries.py --events 5000 --repeat 10      # a quick check

It creates a fresh PostgreSQL database, migrates it to head, and seeds two organisations: the
measured one with ``--events`` audit events forming a valid hash chain (deletion requests and
their jobs, model registrations and uploads, checkpoint downloads, over ``--days`` days), and a
second one with ``--other-events`` events, so every query has to filter by organisation. Then it
times the auditor's queries through the FastAPI app (TestClient: routing, API-key check, SQL,
serialisation; no network), each ``--repeat`` times after ``--warmup`` calls, with parameters
that vary from call to call, and walks the whole chain with GET /v1/audit/verify. It prints a
Markdown table and the EXPLAIN ANALYZE plans of the SQL the endpoints sent; ``--write-docs``
puts the figures in docs/benchmarks.md (the section is replaced when it is there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from report import cpu_name, documented, wrap  # bench/, on the path as the script's folder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client.databases import (  # noqa: E402
    PG_ADMIN,
    create_pg_database,
    database_name,
    drop_pg_database,
    migrate,
    reset_caches,
)

DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Audit queries at 100k events (PostgreSQL)"
SLOW_MS = 50.0
CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
LIFECYCLE_ACTIONS = [
    "deletion_request.created",
    "job.queued",
    "job.running",
    "job.succeeded",
    "job.rejected",
    "job.failed",
    "job.canceled",
    "job.cancel_requested",
    "deletion_request.extended",
]
OTHER_STATUSES = ["failed", "rejected", "canceled", "queued", "running"]


# --------------------------------------------------------------------------------------------
# The database and the service's environment


def configure_service(url: str, workdir: Path) -> None:
    """Settings for the app modules, set before they are imported (their caches reset)."""
    os.environ.update(
        {
            "NEPENTHE_DATABASE_URL": url,
            "NEPENTHE_SIGNING_KEY_FILE": str(workdir / "signing-key.pem"),
            "NEPENTHE_STORE_DIR": str(workdir / "store"),
            "NEPENTHE_BROKER_URL": "filesystem://",
            "NEPENTHE_BROKER_DIR": str(workdir / "broker"),
            "NEPENTHE_DATA_ROOTS": json.dumps([str(workdir)]),
            "NEPENTHE_DEVICE": "cpu",
        }
    )
    reset_caches()


# --------------------------------------------------------------------------------------------
# Seeding: rows built in Python, the chain hashed with the service's own code, core inserts


@dataclass
class OrgData:
    """What one seeded organisation holds, for choosing query parameters."""

    name: str
    org_id: str
    start: datetime
    end: datetime
    events: int = 0
    model_ids: list[str] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    upstream_ids: list[str] = field(default_factory=list)
    callers: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    versions: int = 0
    head_seq: int = 0


class Builder:
    """Rows of one organisation, ready for executemany."""

    def __init__(self, rng: random.Random, org: OrgData) -> None:
        self.rng, self.org = rng, org
        self.tables: dict[str, list[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def hex(self, bits: int = 256) -> str:
        return f"{self.rng.getrandbits(bits):0{bits // 4}x}"

    def row(self, table: str, **values: Any) -> dict[str, Any]:
        self.tables.setdefault(table, []).append(values)
        return values

    def event(self, at: datetime, action: str, actor: str, **fields: Any) -> None:
        from app.signing import json_value

        names = (
            "model_id",
            "model_version_id",
            "dataset_id",
            "request_id",
            "job_id",
            "caller_reference",
            "client_address",
            "http_request_id",
        )
        self.events.append(
            {
                "org_id": self.org.org_id,
                "at": at,
                "action": action,
                "actor": actor,
                **{n: fields.get(n) for n in names},
                "details": json_value(fields.get("details") or {}),
            }
        )

    def between(self, low: datetime, high: datetime) -> datetime:
        return low + (high - low) * self.rng.random()


def build_org(
    rng: random.Random,
    name: str,
    *,
    events: int,
    requests: int,
    models: int,
    callers: int,
    start: datetime,
    end: datetime,
) -> Builder:
    """An organisation's rows: models, versions, one dataset, requests, jobs and the events."""
    from app.deletions import clock, evidence
    from app.orm import DeletionRequest, Job, ModelVersion

    org = OrgData(
        name=name, org_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)), start=start, end=end
    )
    b = Builder(rng, org)
    operator, submitter = "cli:operator", f"key:{b.hex(64)}"
    fleet = [f"key:{b.hex(64)}" for _ in range(3)]
    workers = [f"worker:gpu-node-{i}" for i in range(1, 5)]

    def client() -> dict[str, str]:
        return {
            "client_address": f"10.0.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            "http_request_id": b.hex(128),
        }

    b.row("organization", id=org.org_id, name=name, created_at=start)
    b.event(start, "organization.created", operator, details={"name": name})
    for i, key in enumerate([submitter, *fleet]):
        b.event(
            start + timedelta(minutes=1 + i),
            "api_key.created",
            operator,
            details={"key_id": key[4:], "name": f"key-{i}", "scopes": ["submit"]},
        )
    dataset = b.row(
        "dataset",
        id=b.uid(),
        org_id=org.org_id,
        name="fashion-mnist",
        kind="fashion_mnist",
        location="var/data",
        class_names=CLASSES,
        image_shape=[1, 28, 28],
        train_count=60000,
        test_count=10000,
        created_at=start + timedelta(minutes=10),
    )
    b.event(
        dataset["created_at"],
        "dataset.registered",
        submitter,
        dataset_id=dataset["id"],
        details={"name": "fashion-mnist", "kind": "fashion_mnist", "train": 60000, "test": 10000},
        **client(),
    )
    originals, numbers = [], {}
    for i in range(models):
        registered = start + timedelta(minutes=20 + 7 * i)
        model = b.row(
            "model",
            id=b.uid(),
            org_id=org.org_id,
            name=f"classifier-{i:02d}",
            task="classification",
            architecture="small_resnet",
            architecture_args={"in_channels": 1, "width": 64, "blocks": [2, 2, 2, 2]},
            input_shape=[1, 28, 28],
            normalization={"mean": [0.286], "std": [0.353]},
            class_names=CLASSES,
            encoder=None,
            transform=None,
            created_at=registered,
        )
        b.event(
            registered,
            "model.registered",
            submitter,
            model_id=model["id"],
            details={
                "name": model["name"],
                "task": "classification",
                "architecture": "small_resnet",
                "encoder": None,
                "transform": None,
            },
            **client(),
        )
        version = version_row(b, model["id"], 1, registered + timedelta(minutes=2), None, None)
        b.event(
            version["created_at"],
            "model_version.uploaded",
            submitter,
            model_id=model["id"],
            model_version_id=version["id"],
            details={"number": 1, "sha256": version["sha256"], "format": "safetensors"},
            **client(),
        )
        originals.append(version)
        numbers[model["id"]] = 1
        org.model_ids.append(model["id"])
    org.callers = [f"case-{k:04d}" for k in range(callers)]

    received = sorted(
        b.between(start + timedelta(days=1), end - timedelta(minutes=10)) for _ in range(requests)
    )
    outputs: list[dict[str, Any]] = []  # versions produced by succeeded requests
    for created in received:
        source = rng.choice(originals)
        model_id = source["model_id"]
        caller = rng.choice(org.callers)
        forget = sorted(rng.sample(range(len(CLASSES)), rng.choice((1, 1, 2))))
        params = {
            "noise_lr": 0.1,
            "impair_lr": 0.02,
            "repair_lr": 0.01,
            "repair_epochs": 1,
            "retain_per_class": 1000,
            "seed": rng.randrange(2**31),
        }
        acceptance = {
            "max_forget_accuracy": 0.05,
            "min_retain_accuracy": None,
            "max_retain_drop": 0.05,
        }
        age = end - created
        status = (
            rng.choice(["queued", "running"])
            if age < timedelta(hours=2)
            else rng.choices(
                ["succeeded", "rejected", "failed", "canceled"], weights=[95, 2, 1, 2]
            )[0]
        )
        fields: dict[str, Any] = {  # the request's columns, for the ORM object and the row
            "id": b.uid(),
            "org_id": org.org_id,
            "model_version_id": source["id"],
            "dataset_id": dataset["id"],
            "retain_dataset_id": None,
            "forget_classes": forget,
            "forget_samples": None,
            "method": "unsir",
            "params": params,
            "acceptance": acceptance,
            "reference": None,
            "measure_relearn_time": False,
            "caller_reference": caller,
            "upstream_request_id": f"dsr-{b.uid()}",
            "idempotency_key": f"idem-{b.hex(64)}",
            "body_sha256": b.hex(),
            "created_at": created,
        }
        request = DeletionRequest(
            **fields,
            due_at=clock.due_at(created),
            forget_spec_salt=(salt := b.hex(64)),
            forget_spec_sha256=evidence.forget_spec_sha256(dataset["id"], None, forget, None, salt),
            certificate=None,
        )
        source_version = ModelVersion(id=source["id"], model_id=model_id, sha256=source["sha256"])
        receipt = evidence.issue_receipt(request, source_version)
        job = Job(id=b.uid(), request_id=request.id, status=status, attempts=1)
        started = finished = None
        if status != "queued":
            started = min(created + timedelta(seconds=rng.uniform(2, 600)), end)
        if status not in ("queued", "running"):
            assert started is not None
            finished = started + timedelta(seconds=rng.uniform(60, 1800))
        job.started_at = started
        ids = {
            "model_id": model_id,
            "model_version_id": source["id"],
            "request_id": request.id,
            "job_id": job.id,
            "caller_reference": caller,
        }
        b.event(
            created,
            "deletion_request.created",
            submitter,
            dataset_id=dataset["id"],
            details={
                "upstream_request_id": request.upstream_request_id,
                "forget_spec_sha256": request.forget_spec_sha256,
                "input_checkpoint_sha256": source["sha256"],
                "due_at": request.due_at.isoformat(),
                "receipt_signature": receipt["signature"]["value"],
                "forget_classes": forget,
                "forget_class_names": [CLASSES[c] for c in forget],
                "retain_dataset_id": None,
                "forget_samples_count": None,
                "method": "unsir",
                "params": params,
                "acceptance": acceptance,
                "reference": None,
                "measure_relearn_time": False,
                "idempotency_key": request.idempotency_key,
            },
            **ids,
            **client(),
        )
        b.event(
            created + timedelta(microseconds=50),
            "job.queued",
            submitter,
            **ids,
            details={"from": None, "to": "queued", "reason": "deletion request accepted"},
        )
        worker = rng.choice(workers)
        if started is not None:
            b.event(
                started,
                "job.running",
                worker,
                **ids,
                details={"from": "queued", "to": "running", "reason": None},
            )
        metrics = None
        output_id = None
        if finished is not None:
            if status == "canceled":
                b.event(
                    finished - timedelta(seconds=20),
                    "job.cancel_requested",
                    submitter,
                    **ids,
                    details={"from": None, "to": None, "reason": "cancel requested by the client"},
                    **client(),
                )
            if status in ("succeeded", "rejected"):
                metrics = job_metrics(rng, status)
            detail: dict[str, Any] = {"from": "running", "to": status, "reason": None}
            if status == "succeeded":
                numbers[model_id] += 1
                output = version_row(
                    b, model_id, numbers[model_id], finished, source["id"], request.id
                )
                outputs.append(output)
                output_id = output["id"]
                detail |= {"output_version_id": output_id, "sha256": output["sha256"]}
                output_version = ModelVersion(id=output_id, sha256=output["sha256"])
                evidence.issue_certificate(
                    request, job, source_version, output_version, metrics or {}, finished
                )
            elif status == "failed":
                detail["reason"] = "CUDA out of memory while building the impair set"
            b.event(finished, f"job.{status}", worker, **ids, details=detail)
        if status in ("failed", "rejected", "queued", "running") and rng.random() < 0.3:
            extended = b.between(created, min(end, clock.due_at(created)))
            if extended <= end:
                previous = request.due_at
                request.due_at = clock.due_at(created, 1)
                b.row(
                    "due_date_extension",
                    request_id=request.id,
                    months=1,
                    reason="complex request: technical assessment of the model",
                    actor=submitter,
                    previous_due_at=previous,
                    due_at=request.due_at,
                    created_at=extended,
                )
                b.event(
                    extended,
                    "deletion_request.extended",
                    submitter,
                    **ids,
                    details={
                        "months": 1,
                        "reason": "complex request",
                        "previous_due_at": previous.isoformat(),
                        "due_at": request.due_at.isoformat(),
                    },
                    **client(),
                )
        b.row(
            "deletion_request",
            **fields,
            forget_spec_sha256=request.forget_spec_sha256,
            due_at=request.due_at,
            receipt=receipt,
            certificate=request.certificate,
        )
        phase = {"queued": None, "running": "impair"}.get(status, "save")
        b.row(
            "job",
            id=job.id,
            request_id=request.id,
            status=status,
            phase=phase,
            progress=1.0 if finished else (0.4 if started else 0.0),
            error=detail["reason"] if status == "failed" else None,
            metrics=metrics,
            output_version_id=output_id,
            cancel_requested_at=None,
            attempts=1,
            worker=worker if started else None,
            created_at=created,
            started_at=started,
            finished_at=finished,
            updated_at=finished or started or created,
        )
        org.request_ids.append(request.id)
        org.upstream_ids.append(request.upstream_request_id or "")
        org.statuses[status] = org.statuses.get(status, 0) + 1
    org.requests = len(received)

    # The bulk of the log: checkpoint downloads by the serving fleet, most of them of versions
    # that deletion requests produced (those events name the request and its caller reference).
    by_request = {r["id"]: r["caller_reference"] for r in b.tables.get("deletion_request", [])}
    for _ in range(max(0, events - len(b.events))):
        pool = outputs if outputs and rng.random() < 0.92 else originals
        version = rng.choice(pool)
        request_id = version["produced_by_request_id"]
        b.event(
            b.between(version["created_at"], end),
            "model_version.downloaded",
            rng.choice(fleet),
            model_id=version["model_id"],
            model_version_id=version["id"],
            request_id=request_id,
            caller_reference=by_request.get(request_id),
            details={"number": version["number"], "sha256": version["sha256"]},
            **client(),
        )
    org.versions = len(b.tables["model_version"])
    return b


def version_row(
    b: Builder,
    model_id: str,
    number: int,
    created: datetime,
    parent: str | None,
    request_id: str | None,
) -> dict[str, Any]:
    version_id = b.uid()
    return b.row(
        "model_version",
        id=version_id,
        model_id=model_id,
        number=number,
        sha256=b.hex(),
        size_bytes=44_786_432,
        storage_key=f"models/{model_id}/{version_id}.safetensors",
        source_format="safetensors",
        parent_version_id=parent,
        produced_by_request_id=request_id,
        superseded_at=None,
        superseded_by_request_id=None,
        created_at=created,
    )


def job_metrics(rng: random.Random, status: str) -> dict[str, Any]:
    forget = 0.0 if status == "succeeded" else round(rng.uniform(0.1, 0.4), 4)
    return {
        "before": {
            "forget_accuracy": round(rng.uniform(0.88, 0.95), 4),
            "retain_accuracy": round(rng.uniform(0.9, 0.93), 4),
        },
        "after": {"forget_accuracy": forget, "retain_accuracy": round(rng.uniform(0.85, 0.92), 4)},
        "phase_seconds": {
            "noise": round(rng.uniform(0.3, 0.7), 3),
            "impair": round(rng.uniform(0.7, 1.1), 3),
            "repair": round(rng.uniform(0.4, 1.8), 3),
        },
        "environment": {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0+cu130"},
        "acceptance": {"passed": status == "succeeded", "failures": []},
    }


def chain(b: Builder) -> None:
    """Number the events in time order and link them, as commits would have."""
    from app.audit.chain import GENESIS_HASH, fields_hash

    b.events.sort(key=lambda e: e["at"])
    prev = GENESIS_HASH
    for seq, event in enumerate(b.events, start=1):
        event["seq"], event["prev_hash"] = seq, prev
        event["hash"] = prev = fields_hash(event)
        b.org.actions[event["action"]] = b.org.actions.get(event["action"], 0) + 1
    b.org.events = b.org.head_seq = len(b.events)


def insert(builders: list[Builder], batch: int) -> None:
    """Core executemany inserts in batches, parents first; the chain heads last."""
    from sqlalchemy import insert as sql_insert

    from app.db import get_engine
    from app.orm import Base

    def rows(table: str) -> list[dict[str, Any]]:
        return [r for b in builders for r in b.tables.get(table, [])]

    versions = rows("model_version")
    # Versions that requests produced name their request, so they go in after the requests.
    steps = [
        ("organization", rows("organization")),
        ("dataset", rows("dataset")),
        ("model", rows("model")),
        ("model_version", [v for v in versions if v["produced_by_request_id"] is None]),
        ("deletion_request", rows("deletion_request")),
        ("model_version", [v for v in versions if v["produced_by_request_id"] is not None]),
        ("job", rows("job")),
        ("due_date_extension", rows("due_date_extension")),
        ("audit_event", [e for b in builders for e in b.events]),
    ]
    tables = Base.metadata.tables
    engine = get_engine()
    for table, values in steps:
        for i in range(0, len(values), batch):
            with engine.begin() as conn:
                conn.execute(sql_insert(tables[table]), values[i : i + batch])
    heads = [
        {
            "org_id": b.org.org_id,
            "seq": b.events[-1]["seq"],
            "hash": b.events[-1]["hash"],
            "updated_at": b.events[-1]["at"],
        }
        for b in builders
    ]
    with engine.begin() as conn:
        conn.execute(sql_insert(tables["audit_chain_head"]), heads)


def vacuum_analyze(url: str) -> None:
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def seed(args: argparse.Namespace, url: str) -> tuple[list[OrgData], dict[str, float]]:
    rng = random.Random(args.seed)
    end = datetime.now(UTC).replace(microsecond=0)
    start = end - timedelta(days=args.days)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    # One event is left to the service: the auditor's API key, made by nepenthe-admin's
    # function, appends the last event through the real chain code.
    requests = min(args.requests, args.events // 10)
    measured = build_org(
        rng,
        "bench-auditor",
        events=args.events - 1,
        requests=requests,
        models=args.models,
        callers=args.callers,
        start=start,
        end=end,
    )
    other = build_org(
        rng,
        "bench-other",
        events=args.other_events - 1,
        requests=min(requests // 5, args.other_events // 10),
        models=max(1, args.models // 10),
        callers=max(1, args.callers // 5),
        start=start,
        end=end,
    )
    timings["build"] = time.perf_counter() - t
    t = time.perf_counter()
    for b in (measured, other):
        chain(b)
    timings["hash"] = time.perf_counter() - t
    t = time.perf_counter()
    insert([measured, other], args.batch)
    timings["insert"] = time.perf_counter() - t
    t = time.perf_counter()
    vacuum_analyze(url)
    timings["vacuum_analyze"] = time.perf_counter() - t
    return [measured.org, other.org], timings


# --------------------------------------------------------------------------------------------
# Measuring through the app


class SqlLog:
    """Counts the statements the app sends, and keeps them while ``capture`` is on."""

    def __init__(self) -> None:
        self.count = 0
        self.capture = False
        self.statements: list[tuple[str, Any]] = []

    def __call__(
        self,
        _conn: Any,
        _cursor: Any,
        statement: str,
        parameters: Any,
        _context: Any,
        _executemany: bool,
    ) -> None:
        self.count += 1
        if self.capture:
            self.statements.append((statement, parameters))

    @contextmanager
    def capturing(self) -> Iterator[list[tuple[str, Any]]]:
        self.statements, self.capture = [], True
        try:
            yield self.statements
        finally:
            self.capture = False


@dataclass
class Query:
    name: str
    call: str
    path: str
    params: Callable[[random.Random], dict[str, Any]]
    table: str  # the table whose SQL statement is the query (for EXPLAIN)
    explain: bool = False


@dataclass
class Result:
    name: str
    call: str
    samples_ms: list[float]
    rows: float
    statements: float
    plan_text: str = ""
    plan_summary: str = ""
    plan_ms: float | None = None
    plan_filtered: int = 0  # rows the plan read and dropped by a filter, at most over its nodes

    def pct(self, q: float) -> float:
        return percentile(self.samples_ms, q)


def percentile(samples: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def queries(org: OrgData) -> list[Query]:
    def window(days: float) -> Callable[[random.Random], dict[str, str]]:
        def pick(rng: random.Random) -> dict[str, str]:
            since = org.start + (org.end - org.start - timedelta(days=days)) * rng.random()
            return {"since": since.isoformat(), "until": (since + timedelta(days=days)).isoformat()}

        return pick

    def received(days: float) -> Callable[[random.Random], dict[str, str]]:
        def pick(rng: random.Random) -> dict[str, str]:
            span = window(days)(rng)
            return {"received_since": span["since"], "received_until": span["until"]}

        return pick

    lifecycle = [a for a in LIFECYCLE_ACTIONS if org.actions.get(a)]
    others = [s for s in OTHER_STATUSES if org.statuses.get(s)] or ["succeeded"]
    deep = max(0, org.head_seq - max(200, org.head_seq // 20))
    events, requests = "/v1/audit/events", "/v1/deletion-requests"
    return [
        Query(
            "baseline: liveness check",
            "`GET /healthz` (one `SELECT 1`, no API key)",
            "/healthz",
            lambda _: {},
            "",
            False,
        ),
        Query(
            "events by request",
            "`request_id=`",
            events,
            lambda r: {"request_id": r.choice(org.request_ids)},
            "audit_event",
            True,
        ),
        Query(
            "events by caller reference",
            "`caller_reference=`",
            events,
            lambda r: {"caller_reference": r.choice(org.callers)},
            "audit_event",
            True,
        ),
        Query(
            "events by model",
            "`model_id=`",
            events,
            lambda r: {"model_id": r.choice(org.model_ids)},
            "audit_event",
            True,
        ),
        Query(
            "events by action (lifecycle actions, in turn)",
            "`action=`",
            events,
            lambda r: {"action": r.choice(lifecycle)},
            "audit_event",
            True,
        ),
        Query(
            "events by action (downloads, 90% of the log)",
            "`action=model_version.downloaded`",
            events,
            lambda _: {"action": "model_version.downloaded"},
            "audit_event",
            True,
        ),
        Query(
            "events in a 1-day window", "`since=&until=`", events, window(1), "audit_event", True
        ),
        Query(
            "events in a 30-day window", "`since=&until=`", events, window(30), "audit_event", True
        ),
        Query(
            "events of the last 1 to 3 days (open-ended)",
            "`since=`",
            events,
            lambda r: {"since": (org.end - timedelta(days=r.uniform(1, 3))).isoformat()},
            "audit_event",
            True,
        ),
        Query(
            "events, first page, unfiltered", "(none)", events, lambda _: {}, "audit_event", True
        ),
        Query(
            "events, deep page (last 5% of the chain)",
            "`page_token=`",
            events,
            lambda r: {"page_token": str(r.randrange(deep, max(deep + 1, org.head_seq - 100)))},
            "audit_event",
            True,
        ),
        Query(
            "requests by caller reference",
            "`caller_reference=`",
            requests,
            lambda r: {"caller_reference": r.choice(org.callers)},
            "deletion_request",
            True,
        ),
        Query(
            "requests by upstream request id",
            "`upstream_request_id=`",
            requests,
            lambda r: {"upstream_request_id": r.choice(org.upstream_ids)},
            "deletion_request",
            True,
        ),
        Query(
            "requests by model",
            "`model_id=`",
            requests,
            lambda r: {"model_id": r.choice(org.model_ids)},
            "deletion_request",
            True,
        ),
        Query(
            "requests by status (succeeded)",
            "`status=succeeded`",
            requests,
            lambda _: {"status": "succeeded"},
            "deletion_request",
            True,
        ),
        Query(
            "requests by status (the others, in turn)",
            "`status=`",
            requests,
            lambda r: {"status": r.choice(others)},
            "deletion_request",
            True,
        ),
        Query(
            "requests received in a 7-day window",
            "`received_since=&received_until=`",
            requests,
            received(7),
            "deletion_request",
            True,
        ),
        Query(
            "requests, first page, unfiltered",
            "(none)",
            requests,
            lambda _: {},
            "deletion_request",
            True,
        ),
        Query(
            "deadlines (due within 7, 14 or 30 days)",
            "`/deadlines?within_days=`",
            f"{requests}/deadlines",
            lambda r: {"within_days": r.choice([7, 14, 30])},
            "deletion_request",
            True,
        ),
    ]


def rows_of(body: Any) -> int:
    if isinstance(body, dict):
        return len(body.get("items", []))
    return len(body)


def measure(
    client: Any, log: SqlLog, query: Query, args: argparse.Namespace, rng: random.Random
) -> Result:
    params = [query.params(rng) for _ in range(args.warmup + args.repeat)]
    samples, rows, statements = [], 0, 0
    for i, p in enumerate(params):
        before = log.count
        t = time.perf_counter()
        response = client.get(query.path, params=p)
        elapsed = (time.perf_counter() - t) * 1000
        if response.status_code != 200:
            raise SystemExit(f"{query.name}: {response.status_code} {response.text[:500]}")
        if i >= args.warmup:
            samples.append(elapsed)
            rows += rows_of(response.json())
            statements += log.count - before
    return Result(query.name, query.call, samples, rows / args.repeat, statements / args.repeat)


def explain(
    engine: Any, client: Any, log: SqlLog, query: Query, params: dict[str, Any], result: Result
) -> None:
    """EXPLAIN ANALYZE the statement the endpoint sent (the first one on ``query.table``)."""
    with log.capturing() as sent:
        client.get(query.path, params=params)
    found = [(s, p) for s, p in sent if query.table and f"FROM {query.table}" in s]
    if not found:
        return
    statement, parameters = found[0]
    with engine.connect() as conn:
        text = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters)
        result.plan_text = "\n".join(r[0] for r in text)
        plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters)
        top = plan.scalar()[0]
    result.plan_ms = top["Execution Time"]
    result.plan_filtered = most_filtered(top["Plan"])
    result.plan_summary = f"{describe(top['Plan'])}; {result.plan_ms:.2f} ms"


def most_filtered(node: dict[str, Any]) -> int:
    own = int(node.get("Rows Removed by Filter", 0) * node.get("Actual Loops", 1))
    return max([own, *(most_filtered(c) for c in node.get("Plans", []))])


def describe(node: dict[str, Any]) -> str:
    label = node["Node Type"]
    if node.get("Index Name"):
        label += f" using {node['Index Name']}"
    elif node.get("Relation Name"):
        label += f" on {node['Relation Name']}"
    rows = node.get("Actual Rows", 0) * node.get("Actual Loops", 1)
    label += f" ({rows:g} rows"
    removed = node.get("Rows Removed by Filter")
    label += f", {removed * node.get('Actual Loops', 1):g} filtered out)" if removed else ")"
    children = node.get("Plans", [])
    if not children:
        return label
    if len(children) == 1:
        return f"{label} ← {describe(children[0])}"
    return f"{label} ← [{'; '.join(describe(c) for c in children)}]"


def verify_chain(client: Any, log: SqlLog, repeat: int) -> dict[str, Any]:
    seconds, body, statements = [], {}, 0
    for _ in range(repeat):
        before = log.count
        t = time.perf_counter()
        response = client.get("/v1/audit/verify")
        seconds.append(time.perf_counter() - t)
        statements = log.count - before
        body = response.json()
        if response.status_code != 200 or not body["ok"]:
            raise SystemExit(f"chain verification failed: {response.status_code} {body}")
    return {"seconds": seconds, "events": body["events_checked"], "statements": statements}


def run(args: argparse.Namespace, url: str, workdir: Path) -> dict[str, Any]:
    configure_service(url, workdir)
    t = time.perf_counter()
    migrate(url)
    migrate_s = time.perf_counter() - t
    t = time.perf_counter()
    orgs, seeding = seed(args, url)
    seeding["total"] = time.perf_counter() - t
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in seeding.items() if k != "total")
    print(f"migrated in {migrate_s:.1f} s; seeded in {seeding['total']:.1f} s ({parts})")

    import logging

    from fastapi.testclient import TestClient
    from sqlalchemy import event, text

    from app.actors import Scope
    from app.cli import create_key
    from app.db import get_engine
    from app.main import create_app

    measured = orgs[0]
    token = create_key(measured.name, "bench-auditor", [Scope.audit])
    other_token = create_key(orgs[1].name, "bench-other", [Scope.audit])
    measured.events, measured.head_seq = measured.events + 1, measured.head_seq + 1
    orgs[1].events, orgs[1].head_seq = orgs[1].events + 1, orgs[1].head_seq + 1
    engine = get_engine()
    log = SqlLog()
    event.listen(engine, "before_cursor_execute", log)
    with engine.connect() as conn:
        pg_version = conn.execute(text("SELECT version()")).scalar_one()
        shared_buffers = conn.execute(text("SHOW shared_buffers")).scalar_one()
        table_size = conn.execute(
            text("SELECT pg_size_pretty(pg_total_relation_size('audit_event'))")
        ).scalar_one()
    rng = random.Random(args.seed + 1)
    app = create_app()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    results: list[Result] = []
    load_before = os.getloadavg()[0]
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {other_token}"
        other_check = verify_chain(client, log, 1)
        client.headers["Authorization"] = f"Bearer {token}"
        for query in queries(measured):
            result = measure(client, log, query, args, rng)
            slow = result.pct(50) > SLOW_MS
            if query.explain or slow:
                explain(engine, client, log, query, query.params(rng), result)
            results.append(result)
            print(
                f"{result.name:<48} p50 {result.pct(50):8.1f} ms  p95 {result.pct(95):8.1f} ms"
                f"  rows {result.rows:6.1f}  SQL/call {result.statements:6.1f}"
            )
        chain_check = verify_chain(client, log, args.verify_repeat)
    load = (load_before, os.getloadavg()[0])
    print(f"load average (1 min) before / after the measurements: {load[0]:.1f} / {load[1]:.1f}")
    return {
        "orgs": orgs,
        "seeding": seeding,
        "migrate_s": migrate_s,
        "results": results,
        "verify": chain_check,
        "other_verify": other_check,
        "pg_version": pg_version,
        "shared_buffers": shared_buffers,
        "table_size": table_size,
        "load": load,
    }


# --------------------------------------------------------------------------------------------
# Reporting


def table(results: list[Result]) -> str:
    lines = [
        "| query | parameters | rows returned | SQL statements | p50 (ms) | p95 (ms) | p99 (ms) "
        "| max (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.call} | {r.rows:.0f} | {r.statements:.0f} | "
            f"**{r.pct(50):.1f}** | {r.pct(95):.1f} | {r.pct(99):.1f} | {max(r.samples_ms):.1f} |"
        )
    return "\n".join(lines)


def verify_line(v: dict[str, Any]) -> str:
    seconds = v["seconds"]
    best, mean = min(seconds), sum(seconds) / len(seconds)
    return (
        f"GET /v1/audit/verify walked {v['events']:,} events in {mean:.2f} s on average over "
        f"{len(seconds)} runs (best {best:.2f} s, worst {max(seconds):.2f} s): "
        f"{v['events'] / mean:,.0f} events/s, {v['statements']} SQL statements per walk"
    )


def section(args: argparse.Namespace, report: dict[str, Any], command: str) -> str:
    measured, other = report["orgs"]
    seeding = report["seeding"]
    results: list[Result] = report["results"]
    statuses = ", ".join(
        f"{n:,} {k}" for k, n in sorted(measured.statuses.items(), key=lambda kv: -kv[1])
    )
    downloads = measured.actions.get("model_version.downloaded", 0)
    slow = [r for r in results if r.pct(50) > SLOW_MS]
    n_plus_one = [r for r in slow if r.rows and r.statements > 2 * r.rows]
    out = [
        SECTION,
        "",
        "`bench/audit_queries.py` creates a fresh PostgreSQL database, runs the migrations to "
        "head and seeds it; then it calls the auditor's endpoints through the FastAPI app "
        "in-process (`TestClient`: routing, API-key check, SQL, response models; no network), "
        f"each {args.repeat} times after {args.warmup} warm-up calls, with parameters drawn "
        "afresh for every call. Latency is the wall-clock time of one `client.get`; *SQL "
        "statements* is what SQLAlchemy sent per call (the key check included), *rows returned* "
        "the mean page size (the API's default limits: 100, and 1,000 for deadlines).",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- *Data*: the measured organisation holds {measured.events:,} audit events in one "
        f"valid hash chain over {args.days} days ({measured.requests:,} deletion requests "
        f"with their jobs, receipts and certificates: {statuses}; {len(measured.model_ids)} "
        f"models, {measured.versions:,} versions; {len(measured.callers)} caller references; "
        f"{downloads:,} of the events are checkpoint downloads, the rest request and job "
        f"lifecycle, registrations and keys). A second organisation holds {other.events:,} "
        f"events and {other.requests} requests with the same caller references, so every query "
        f"filters by organisation. `audit_event` is {report['table_size']} with its indexes. "
        "`VACUUM ANALYZE` after seeding.",
        f"- *Seeding*: {seeding['total']:.0f} s in all (rows built and receipts signed "
        f"{seeding['build']:.1f} s, chain hashed with `app.audit.chain.fields_hash` "
        f"{seeding['hash']:.1f} s, batched core inserts {seeding['insert']:.1f} s, `VACUUM "
        f"ANALYZE` {seeding['vacuum_analyze']:.1f} s); migrations {report['migrate_s']:.1f} s.",
        f"- *Machine*: {os.cpu_count()}-core CPU ({cpu_name()}), the development machine; "
        f"{report['pg_version'].split(' on ')[0]} on the same machine, default settings "
        f"(shared_buffers {report['shared_buffers']}); Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}. One-minute load average {report['load'][0]:.1f} before "
        f"and {report['load'][1]:.1f} after the measurements"
        + (
            " (other work shared the cores: the figures are upper bounds)."
            if max(report["load"]) > 1.5
            else "."
        ),
        "",
        table(results),
        "",
        f"Chain verification: {verify_line(report['verify'])}. The second organisation's chain "
        f"({report['other_verify']['events']:,} events) verified too.",
        "",
        "Plans: `EXPLAIN (ANALYZE, BUFFERS)` of the statement each endpoint sent, for one "
        "parameter set (the script prints them in full):",
        "",
    ]
    out += [f"- {r.name}: {r.plan_summary}" for r in results if r.plan_summary]
    out.append("")
    audit_sql = [r.plan_ms for r in results if r.name.startswith("events") and r.plan_ms]
    if audit_sql:
        out.append(
            f"The audit-event queries' own SQL ran in {min(audit_sql):.2f} to "
            f"{max(audit_sql):.2f} ms in these plans; the rest of their latency is the "
            "in-process HTTP path, the API-key check (its own statement) and the response model "
            "of up to 100 events (compare the baseline row)."
        )
        out.append("")
    rest = [r for r in slow if r not in n_plus_one]
    if n_plus_one:
        names = ", ".join(f"{r.name} ({r.pct(50):.0f} ms)" for r in n_plus_one)
        out.append(
            f"Over {SLOW_MS:.0f} ms at the median: {names}. Their SQL is fast (plans above); "
            "the time goes to rendering each request with `app.deletions.service.to_read`, "
            "which loads the input version, model, dataset, job, extensions, artifacts and "
            "output version one request at a time: several statements per row returned (see "
            "*SQL statements*), each a round trip."
        )
        out.append("")
    if rest:
        names = ", ".join(f"{r.name} ({r.pct(50):.0f} ms)" for r in rest)
        out += [f"Also over {SLOW_MS:.0f} ms at the median: {names}.", ""]
    for r in results:
        walked = "uq_audit_event_org_id" in r.plan_summary and r.plan_filtered > 10_000
        if walked and r.plan_ms is not None:
            out.append(
                f"*{r.name}* ({r.pct(50):.0f} ms at the median, {r.plan_ms:.0f} ms of SQL in its "
                f"plan) walks `uq_audit_event_org_id` (org_id, seq) in chain order and drops "
                f"{r.plan_filtered:,} events by its filter before it has a page: the planner "
                "expects the matching events spread along the chain, but `at` grows with `seq`, "
                "so the events of a recent period all lie at its end."
            )
            out.append("")
    if not slow:
        out.append(f"Every query's median is under {SLOW_MS:.0f} ms.")
    return "\n".join(wrap(line) for line in out).rstrip("\n") + "\n"


def write_docs(text: str) -> None:
    """Replace the section when it is there, else append it."""
    doc = DOCS.read_text()
    marker = f"\n{SECTION}\n"
    start = doc.find(marker)
    if start == -1:
        DOCS.write_text(doc.rstrip("\n") + "\n\n" + text)
        return
    end = doc.find("\n## ", start + len(marker))
    rest = doc[end + 1 :] if end != -1 else ""
    DOCS.write_text(doc[: start + 1] + text + ("\n" + rest if rest else ""))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000, help="measured organisation")
    parser.add_argument("--other-events", type=int, default=20_000, help="second organisation")
    parser.add_argument("--requests", type=int, default=2000, help="at most events / 10")
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--callers", type=int, default=200, help="distinct caller references")
    parser.add_argument("--days", type=int, default=90, help="the span of the log")
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per query")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first")
    parser.add_argument("--verify-repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=5000, help="rows per insert")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--admin-url", default=PG_ADMIN, help="a database to CREATE DATABASE from")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--write-docs", action="store_true", help=f"write {SECTION!r}")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()
    if args.events < 100 or args.other_events < 100:
        raise SystemExit("--events and --other-events must be at least 100")
    command = " ".join([".venv/bin/python", "bench/audit_queries.py", *documented(sys.argv[1:])])
    url = create_pg_database(args.admin_url, prefix="nepenthe_bench")
    name = database_name(url)
    print(f"database {name}")
    try:
        with tempfile.TemporaryDirectory(prefix="nepenthe-bench-") as tmp:
            report = run(args, url, Path(tmp))
    finally:
        from app.db import dispose_engines

        dispose_engines()
        if args.keep:
            print(f"kept database {name}: {url}")
        else:
            drop_pg_database(args.admin_url, url)
    results: list[Result] = report["results"]
    for r in results:
        if r.plan_text and (
            r.name in ("events by request", "events in a 1-day window") or r.pct(50) > SLOW_MS
        ):
            print(f"\nEXPLAIN (ANALYZE, BUFFERS): {r.name}\n{r.plan_text}")
    print()
    print(table(results))
    print()
    print(verify_line(report["verify"]))
    text = section(args, report, command)
    if args.write_docs:
        if args.events != 100_000:
            print(f"note: the section is titled for 100k events; this run had {args.events}")
        write_docs(text)
        print(f"wrote {SECTION!r} in {DOCS.relative_to(ROOT)}")
    if args.out:
        figures = {
            "command": command,
            "seeding_s": report["seeding"],
            "verify": report["verify"],
            "pg_version": report["pg_version"],
            "queries": [
                {
                    "name": r.name,
                    "samples_ms": r.samples_ms,
                    "rows": r.rows,
                    "statements": r.statements,
                    "plan": r.plan_text,
                }
                for r in results
            ],
        }
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
