"""Load on loopback: concurrent clients submit, retry, poll and download through the service.

    .venv/bin/python bench/load.py --write-docs                      # production, minutes
    .venv/bin/python bench/load.py --backend embedded --requests 60  # SQLite, filesystem broker
    .venv/bin/python bench/load.py --requests 20 --clients 4         # a quick check

It starts the real service on 127.0.0.1, as `client.local.LocalService` does: migrations, an admin
key made with nepenthe-admin, a uvicorn API process and ``--workers`` Celery worker processes, on
``--backend production`` (a PostgreSQL database created for the run and dropped afterwards, Redis
with queues of the run's own) or ``--backend embedded`` (SQLite and the filesystem:// broker, one
worker). It registers the digits dataset and one tiny digits model per client (the tests' trained
``tiny_cnn``), so each client works through its own model's lineage as one data-protection team
would: every deletion runs on the version the previous one produced, and nothing it downloads is
superseded by another client.

Then ``--clients`` threads, each with its own HTTP connection and a submit+download key, share
``--requests`` deletion requests, for at most ``--max-seconds``. Each client submits a request
with an Idempotency-Key, sends the same request with the same key once more (as a client that
lost the answer would: right after it, or, for every ``--concurrent-retry-every``-th request, at
the same moment from a second connection), polls the job every ``--poll-interval`` seconds until
it ends and downloads the output checkpoint of a succeeded job, checking its SHA-256. The jobs are
the cheapest UNSIR that still runs every phase (one noise step, ten retain images per class, one
repair epoch), with the acceptance checks switched off so they succeed and publish a version;
every ``--reject-every``-th request keeps the default thresholds (its job is normally rejected,
which publishes nothing). Submits outpace the workers; clients wait for their jobs.

Afterwards it checks, from the API and from the database, that every accepted request exists
exactly once (the retries named the same request, one row and one job per Idempotency-Key, one
``deletion_request.created`` audit event each), that every job ended (none queued or running after
``--drain-seconds``), that no answer was a 5xx or a transport error, and that the audit chain
verifies. It prints requests per second and p50/p99 latency of submit, retry, poll and download;
``--write-docs`` puts them in docs/benchmarks.md (one subsection per backend, replaced when there).
The exit status is 1 when a check failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from report import cpu_name, documented, wrap, write_backend_section  # noqa: E402 - bench/, on the path as the script's folder

from client.api import TERMINAL, NepentheClient  # noqa: E402
from client.databases import (  # noqa: E402
    PG_ADMIN,
    REDIS_URL,
    create_pg_database,
    database_name,
    drop_pg_database,
)
from client.local import LocalService, stop_process  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Load: submit, poll and download on loopback"
BACKENDS = {
    "production": "production backend (PostgreSQL + Redis)",
    "embedded": "embedded backend (SQLite + filesystem:// broker)",
}
# The cheapest UNSIR that still runs noise, impair, repair and the evaluations.
CHEAP_PARAMS = {
    "noise_batch": 8,
    "noise_steps": 1,
    "noise_repeats": 1,
    "retain_per_class": 10,
    "impair_batch_size": 32,
    "repair_epochs": 1,
    "repair_batch_size": 32,
    "max_extra_repair_epochs": 0,
    "seed": 0,
}
OPEN_ACCEPTANCE = {
    "max_forget_accuracy": None,
    "max_retain_drop": None,
    "max_mia_gap": None,
    "max_forget_member_excess": None,
}
OPS = ("submit", "retry", "poll", "download")


# --------------------------------------------------------------------------------------------
# The service: settings per backend, N workers


@contextmanager
def backend_env(args: argparse.Namespace, workdir: Path) -> Iterator[dict[str, str]]:
    """The service's settings; on production a database and queues of this run, removed after."""
    env = {
        "NEPENTHE_STORE_DIR": str(workdir / "store"),
        "NEPENTHE_BROKER_DIR": str(workdir / "broker"),
        "NEPENTHE_DEVICE": "cpu",
        "NEPENTHE_DATA_ROOTS": json.dumps([str(workdir)]),
        "NEPENTHE_SIGNING_KEY_FILE": str(workdir / "signing-key.pem"),
        # The load of one organisation on purpose: its submission and queue quotas are off.
        "NEPENTHE_QUOTA_SUBMISSIONS_PER_MINUTE": "0",
        "NEPENTHE_QUOTA_QUEUED_JOBS": "0",
        # Worker processes share the cores: one BLAS/OpenMP pool each, sized to fit.
        "OMP_NUM_THREADS": str(args.torch_threads),
        "MKL_NUM_THREADS": str(args.torch_threads),
    }
    if not args.fresh_signing_key:
        # Provisioned, as production requires; left to the service, the first concurrent
        # submits race to create it (see --fresh-signing-key).
        from app.signing import create_key_file

        create_key_file(workdir / "signing-key.pem")
    if args.backend == "embedded":
        env["NEPENTHE_DATABASE_URL"] = f"sqlite:///{workdir / 'nepenthe.db'}"
        env["NEPENTHE_BROKER_URL"] = "filesystem://"
        yield env
        return
    url = create_pg_database(args.admin_url, prefix="nepenthe_load")
    name = database_name(url)
    suffix = name.rsplit("_", 1)[1]
    env |= {
        "NEPENTHE_DATABASE_URL": url,
        "NEPENTHE_BROKER_URL": args.redis_url,
        # Queues of this run's own: no other run's worker on the same Redis takes its jobs.
        "NEPENTHE_TASK_QUEUE": f"unlearning-load-{suffix}",
        "NEPENTHE_WEBHOOK_QUEUE": f"webhooks-load-{suffix}",
    }
    print(f"database {name}, queue {env['NEPENTHE_TASK_QUEUE']}")
    try:
        yield env
    finally:
        queues = [env["NEPENTHE_TASK_QUEUE"], env["NEPENTHE_WEBHOOK_QUEUE"]]
        with redis.Redis.from_url(args.redis_url) as client:  # the queues and kombu's bindings
            client.delete(
                *queues,
                *(f"_kombu.binding{kind}.{q}" for q in queues for kind in ("", "_permanent")),
            )
        if args.keep:
            print(f"kept database {name}")
        else:
            drop_pg_database(args.admin_url, url)


class Service(LocalService):
    """LocalService with ``workers`` worker processes (distinct Celery node names)."""

    def __init__(self, env: dict[str, str], log_dir: Path, workers: int) -> None:
        super().__init__(env, ROOT, log_dir, org="load")
        self.count = workers
        self.workers: list[subprocess.Popen[bytes]] = []

    def start_worker(self) -> subprocess.Popen[bytes]:
        for i in range(self.count):
            command = self.worker_command(f"nepenthe-load-{self.port}-{i}@%h")
            self.workers.append(self._spawn(f"worker-{i}", command))
        self.worker = self.workers[0]
        return self.worker

    def wait_workers_ready(self, timeout: float = 120.0) -> None:
        """Until every worker logged ``ready`` (torch imported, queues consumed)."""
        deadline = time.monotonic() + timeout
        logs = [self.log_dir / f"worker-{i}.log" for i in range(self.count)]
        while time.monotonic() < deadline:
            for i, proc in enumerate(self.workers):
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {i} exited; see {logs[i]}")
            if all(p.exists() and " ready." in p.read_text(errors="replace") for p in logs):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the workers were not ready after {timeout:.0f} s; see {logs}")

    def __exit__(self, *exc: Any) -> None:
        for proc in self.workers:
            stop_process(proc, signal.SIGTERM)
        super().__exit__(*exc)


def register(
    api: NepentheClient, count: int, workdir: Path, report: dict[str, Any]
) -> tuple[str, list[str]]:
    """The digits dataset and ``count`` models with one trained version each: (dataset id,
    version ids). Each model's weights are its own (the trained ones, shifted by a model's own
    tiny offset): a deletion supersedes every version of the organisation with the same weights,
    so identical uploads would let one client's deletion supersede the others' inputs."""
    import safetensors.torch
    import torch

    from tests.helpers import ARCH, CLASS_NAMES, trained_state

    torch.set_num_threads(1)  # this process is the clients' side: leave the cores to the service
    t = time.perf_counter()
    trained = trained_state()
    report["train_s"] = time.perf_counter() - t
    dataset = api.register_dataset("digits", "sklearn_digits")

    def one(i: int) -> str:
        path = workdir / f"original-{i:02d}.safetensors"
        own = {k: v + i * 1e-5 if v.is_floating_point() else v for k, v in trained.items()}
        safetensors.torch.save_file(own, str(path))
        model = api.register_model(
            name=f"digits-cnn-{i:02d}",
            task="classification",
            architecture=ARCH,
            input_shape=[1, 8, 8],
            normalization={"mean": [0.5], "std": [0.5]},
            class_names=CLASS_NAMES,
        )
        return str(api.upload_version(model["id"], path)["id"])

    with ThreadPoolExecutor(4) as pool:
        return dataset["id"], list(pool.map(one, range(count)))


# --------------------------------------------------------------------------------------------
# The clients


@dataclass
class Tally:
    """What the clients saw; shared by the threads under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    issued: int = 0
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: {op: Counter() for op in OPS})
    errors: list[str] = field(default_factory=list)  # transport errors and broken answers
    kinds: Counter[str] = field(default_factory=Counter)  # "op status code" of the errors
    accepted: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (request, job)
    mismatched: list[str] = field(default_factory=list)  # retries that named another request
    both_created: list[str] = field(default_factory=list)  # neither answer marked a replay
    outcomes: Counter[str] = field(default_factory=Counter)  # job statuses the clients saw
    unfinished: list[str] = field(default_factory=list)  # jobs a client gave up on
    bytes_downloaded: int = 0
    concurrent_retries: int = 0
    last_answer: float = 0.0

    def record(self, op: str, started: float, response: httpx.Response | None) -> None:
        now = time.perf_counter()
        with self.lock:
            self.latency_ms[op].append((now - started) * 1000)
            self.statuses[op][response.status_code if response is not None else 0] += 1
            self.last_answer = max(self.last_answer, now)

    def error(self, text: str, kind: str) -> None:
        with self.lock:
            self.errors.append(text)
            self.kinds[kind] += 1


def problem_code(response: httpx.Response) -> str:
    try:
        return str(response.json().get("code", ""))
    except ValueError:
        return ""


@dataclass
class Plan:
    url: str
    key: str
    dataset_id: str
    run_id: str
    requests: int
    stop_submitting: float  # perf_counter
    give_up: float  # perf_counter: clients stop polling
    poll_interval: float
    reject_every: int
    concurrent_retry_every: int


def timed(tally: Tally, op: str, send: Any) -> httpx.Response | None:
    started = time.perf_counter()
    try:
        response: httpx.Response = send()
    except httpx.HTTPError as exc:
        tally.record(op, started, None)
        tally.error(f"{op}: {type(exc).__name__}: {exc}", f"{op} {type(exc).__name__}")
        return None
    tally.record(op, started, response)
    if response.status_code >= 500:
        tally.error(
            f"{op}: {response.status_code} {response.text[:300]}",
            f"{op} {response.status_code} {problem_code(response)}",
        )
    return response


def run_client(index: int, version_id: str, plan: Plan, tally: Tally) -> None:
    rng = random.Random(index)
    headers = {"Authorization": f"Bearer {plan.key}"}
    with (
        httpx.Client(base_url=plan.url, headers=headers, timeout=60) as http,
        httpx.Client(base_url=plan.url, headers=headers, timeout=60) as second,
    ):
        while True:
            with tally.lock:
                if tally.issued >= plan.requests or time.perf_counter() > plan.stop_submitting:
                    return
                tally.issued += 1
                n = tally.issued
            key = f"load-{plan.run_id}-{n:05d}"
            body = {
                "model_version_id": version_id,
                "dataset_id": plan.dataset_id,
                "forget_classes": sorted(rng.sample(range(10), rng.choice((1, 2)))),
                "method": "unsir",
                "params": {**CHEAP_PARAMS, "seed": n},
                "caller_reference": key,
            }
            if plan.reject_every <= 0 or n % plan.reject_every:
                body["acceptance"] = OPEN_ACCEPTANCE
            job = submit_twice(http, second, key, body, n, plan, tally)
            if job is None:
                continue
            found = poll(http, job, plan, tally)
            if found is not None and found["status"] == "succeeded":
                output = found["output_version"]
                if download(http, output, tally):
                    version_id = output["id"]


def submit_twice(
    http: httpx.Client,
    second: httpx.Client,
    key: str,
    body: dict[str, Any],
    n: int,
    plan: Plan,
    tally: Tally,
) -> str | None:
    """Submit, then the same request with the same key; returns the job id when accepted."""
    headers = {"Idempotency-Key": key}

    def send(client: httpx.Client) -> httpx.Response:
        return client.post("/v1/deletion-requests", json=body, headers=headers)

    if plan.concurrent_retry_every > 0 and n % plan.concurrent_retry_every == 0:
        # Both at once, from two connections: a retry sent while the first is in flight.
        answers: list[httpx.Response | None] = [None, None]
        gate = threading.Barrier(2)

        def other() -> None:
            gate.wait()
            answers[1] = timed(tally, "retry", lambda: send(second))

        helper = threading.Thread(target=other)
        helper.start()
        gate.wait()
        answers[0] = timed(tally, "submit", lambda: send(http))
        helper.join()
        with tally.lock:
            tally.concurrent_retries += 1
        first, again = answers
    else:
        first = timed(tally, "submit", lambda: send(http))
        again = timed(tally, "retry", lambda: send(http)) if first is not None else None
    good = [r for r in (first, again) if r is not None and r.status_code in (201, 202)]
    for r, op in ((first, "submit"), (again, "retry")):
        if r is not None and r.status_code not in (201, 202) and r.status_code < 500:
            tally.error(
                f"{op} {key}: {r.status_code} {r.text[:300]}",
                f"{op} {r.status_code} {problem_code(r)}",
            )
    if not good:
        return None
    ids = {r.json()["id"] for r in good}
    replayed = [r.headers.get("Idempotent-Replayed") == "true" for r in good]
    request = good[0].json()
    with tally.lock:
        tally.accepted[key] = (request["id"], request["job"]["id"])
        if len(ids) > 1:
            tally.mismatched.append(f"{key}: {sorted(ids)}")
        if len(good) == 2 and not any(replayed):
            tally.both_created.append(key)
    return str(request["job"]["id"])


def poll(http: httpx.Client, job_id: str, plan: Plan, tally: Tally) -> dict[str, Any] | None:
    while time.perf_counter() < plan.give_up:
        time.sleep(plan.poll_interval)
        response = timed(tally, "poll", lambda: http.get(f"/v1/jobs/{job_id}"))
        if response is None or response.status_code != 200:
            continue
        job: dict[str, Any] = response.json()
        if job["status"] in TERMINAL:
            with tally.lock:
                tally.outcomes[job["status"]] += 1
            return job
    with tally.lock:
        tally.unfinished.append(job_id)
    return None


def download(http: httpx.Client, output: dict[str, Any], tally: Tally) -> bool:
    """The whole checkpoint, its SHA-256 checked against the header and the job's answer."""
    started = time.perf_counter()
    digest, size = hashlib.sha256(), 0
    try:
        with http.stream("GET", output["download_url"]) as response:
            if response.status_code == 200:
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    size += len(chunk)
            else:
                response.read()
    except httpx.HTTPError as exc:
        tally.record("download", started, None)
        tally.error(
            f"download {output['id']}: {type(exc).__name__}: {exc}",
            f"download {type(exc).__name__}",
        )
        return False
    tally.record("download", started, response)
    if response.status_code != 200:
        tally.error(
            f"download {output['id']}: {response.status_code} {response.text[:300]}",
            f"download {response.status_code} {problem_code(response)}",
        )
        return False
    expected = {response.headers.get("X-Checksum-SHA256"), output["sha256"]}
    if expected != {digest.hexdigest()}:
        tally.error(
            f"download {output['id']}: sha256 {digest.hexdigest()}, expected {expected}",
            "download checksum mismatch",
        )
        return False
    with tally.lock:
        tally.bytes_downloaded += size
    return True


# --------------------------------------------------------------------------------------------
# Checks afterwards: the API's view and the database's


def check(admin: NepentheClient, env: dict[str, str], tally: Tally, run_id: str) -> dict[str, Any]:
    from sqlalchemy import create_engine, text

    accepted = tally.accepted
    found: dict[str, int] = {}  # request id -> times listed
    for item in admin.list_requests({}, page_size=500):
        found[item["id"]] = found.get(item["id"], 0) + 1
    ours = {rid for rid, _ in accepted.values()}
    jobs = Counter(admin.get_job(job_id)["status"] for _, job_id in accepted.values())
    verify = admin.audit_verify()
    engine = create_engine(env["NEPENTHE_DATABASE_URL"])
    like = {"like": f"load-{run_id}-%"}
    with engine.connect() as conn:
        rows: dict[str, int] = dict(
            conn.execute(
                text(
                    "SELECT idempotency_key, count(*) FROM deletion_request "
                    "WHERE idempotency_key LIKE :like GROUP BY idempotency_key"
                ),
                like,
            ).all()
        )
        per_request_jobs = Counter(
            n
            for (n,) in conn.execute(
                text(
                    "SELECT count(j.id) FROM deletion_request r "
                    "LEFT JOIN job j ON j.request_id = r.id GROUP BY r.id"
                )
            )
        )
        db_status: dict[str, int] = dict(
            conn.execute(text("SELECT status, count(*) FROM job GROUP BY status")).all()
        )
        created_events = conn.execute(
            text("SELECT count(*) FROM audit_event WHERE action = 'deletion_request.created'")
        ).scalar_one()
        attempts: Counter[int] = Counter(
            dict(conn.execute(text("SELECT attempts, count(*) FROM job GROUP BY attempts")).all())
        )
        transitions = Counter(
            n for (n,) in conn.execute(text("SELECT count(*) FROM job_event GROUP BY job_id"))
        )
        versions = conn.execute(text("SELECT count(*) FROM model_version")).scalar_one()
        downloads = conn.execute(
            text("SELECT count(*) FROM audit_event WHERE action = 'model_version.downloaded'")
        ).scalar_one()
    engine.dispose()
    open_statuses = {s: n for s, n in db_status.items() if s not in TERMINAL}
    problems = []
    if set(found) != ours:
        problems.append(
            f"the API lists {len(found)} requests, the clients had {len(ours)} "
            f"accepted; missing {sorted(ours - set(found))[:5]}, extra "
            f"{sorted(set(found) - ours)[:5]}"
        )
    if any(n != 1 for n in found.values()):
        problems.append("a request was listed twice")
    if set(rows) != set(accepted) or any(n != 1 for n in rows.values()):
        dup = {k: n for k, n in rows.items() if n != 1}
        problems.append(
            f"rows per Idempotency-Key: {len(rows)} keys in the database, "
            f"{len(accepted)} accepted, duplicated {dup}"
        )
    if set(per_request_jobs) != {1}:
        problems.append(f"jobs per request: {dict(per_request_jobs)}")
    if created_events != len(accepted):
        problems.append(
            f"{created_events} deletion_request.created events for "
            f"{len(accepted)} accepted requests"
        )
    if open_statuses or any(s not in TERMINAL for s in jobs):
        problems.append(f"jobs not ended: database {open_statuses}, API {dict(jobs)}")
    if not verify.get("ok"):
        problems.append(f"audit chain: {verify}")
    if tally.mismatched:
        problems.append(f"retries naming another request: {tally.mismatched[:5]}")
    if tally.both_created:
        problems.append(f"both answers 'created' (no Idempotent-Replayed): {tally.both_created}")
    fives = {
        op: n
        for op, c in tally.statuses.items()
        if (n := sum(v for s, v in c.items() if s >= 500 or s == 0))
    }
    if fives:
        problems.append(f"5xx or transport errors: {fives}")
    return {
        "listed": len(found),
        "db_keys": len(rows),
        "api_jobs": dict(jobs),
        "db_jobs": db_status,
        "created_events": created_events,
        "attempts": dict(attempts),
        "transitions": dict(transitions),
        "versions": versions,
        "download_events": downloads,
        "audit_events": verify.get("events_checked"),
        "problems": problems,
    }


def log_errors(log_dir: Path) -> dict[str, int]:
    """Tracebacks per log file (the API's and the workers')."""
    return {
        p.name: n
        for p in sorted(log_dir.glob("*.log"))
        if (n := p.read_text(errors="replace").count("Traceback"))
    }


# --------------------------------------------------------------------------------------------
# The run


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"backend": args.backend}
    with backend_env(args, workdir) as env:
        t = time.perf_counter()
        service = Service(env, workdir / "logs", args.workers)
        with service:
            service.wait_workers_ready()
            report["start_s"] = time.perf_counter() - t
            admin = NepentheClient(service.url, service.admin_key)
            t = time.perf_counter()
            dataset_id, versions = register(admin, args.clients, workdir, report)
            report["register_s"] = time.perf_counter() - t
            key = admin.create_key("load-clients", ["submit", "download"])["token"]
            print(
                f"service up in {report['start_s']:.1f} s ({args.workers} workers); "
                f"{args.clients} models registered in {report['register_s']:.1f} s "
                f"(training {report['train_s']:.1f} s)"
            )
            run_id = uuid.uuid4().hex[:8]
            tally = Tally()
            start = time.perf_counter()
            plan = Plan(
                url=service.url,
                key=key,
                dataset_id=dataset_id,
                run_id=run_id,
                requests=args.requests,
                stop_submitting=start + args.max_seconds,
                give_up=start + args.max_seconds + args.drain_seconds,
                poll_interval=args.poll_interval,
                reject_every=args.reject_every,
                concurrent_retry_every=args.concurrent_retry_every,
            )
            load_before = os.getloadavg()
            threads = [
                threading.Thread(target=run_client, args=(i, versions[i], plan, tally))
                for i in range(args.clients)
            ]
            for thread in threads:
                thread.start()
            progress(threads, tally, start, args)
            report["load_s"] = time.perf_counter() - start
            report["load_avg"] = (load_before, os.getloadavg())
            report["tally"] = tally
            print(f"clients done in {report['load_s']:.1f} s; checking")
            report["check"] = check(admin, env, tally, run_id)
            admin.close()
            report["server"] = server_versions(env)
        report["log_errors"] = log_errors(workdir / "logs")
        if report["log_errors"] and args.keep_logs:
            kept = ROOT / "var" / f"load-logs-{args.backend}-{run_id}"
            kept.parent.mkdir(exist_ok=True)
            subprocess.run(["cp", "-r", str(workdir / "logs"), str(kept)], check=True)
            print(f"logs kept in {kept}")
    return report


def progress(threads: list[threading.Thread], tally: Tally, start: float, args: Any) -> None:
    """Wait for the clients, printing a line every 15 s."""
    last = start
    while any(t.is_alive() for t in threads):
        time.sleep(1.0)
        now = time.perf_counter()
        if now - last >= 15:
            last = now
            with tally.lock:
                line = (
                    f"{now - start:6.0f} s  issued {tally.issued:4d}/{args.requests}  "
                    f"ended {sum(tally.outcomes.values()):4d}  "
                    f"polls {len(tally.latency_ms['poll']):6d}  "
                    f"errors {len(tally.errors)}"
                )
            print(f"{line}  load {os.getloadavg()[0]:.1f}", flush=True)


def server_versions(env: dict[str, str]) -> str:
    if not env["NEPENTHE_DATABASE_URL"].startswith("postgresql"):
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version}"
    url = env["NEPENTHE_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        pg = row[0].split()[0] if row else "?"
    with redis.Redis.from_url(env["NEPENTHE_BROKER_URL"]) as client:
        info: Any = client.info("server")
    return f"PostgreSQL {pg}, Redis {info.get('redis_version', '?')}"


# --------------------------------------------------------------------------------------------
# Reporting


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q)) if samples else float("nan")


def table(report: dict[str, Any]) -> str:
    tally: Tally = report["tally"]
    seconds = report["load_s"]
    lines = [
        "| operation | count | per second | p50 (ms) | p99 (ms) | max (ms) | answers |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {
        "submit": "submit (`POST /v1/deletion-requests`)",
        "retry": "retry, same Idempotency-Key (replayed)",
        "poll": "poll (`GET /v1/jobs/{id}`)",
        "download": "download checkpoint (streamed, SHA-256 checked)",
    }
    for op in OPS:
        samples = tally.latency_ms[op]
        answers = ", ".join(
            f"{n} x {s or 'transport error'}" for s, n in sorted(tally.statuses[op].items())
        )
        top = max(samples) if samples else float("nan")
        lines.append(
            f"| {names[op]} | {len(samples)} | {len(samples) / seconds:.1f} | "
            f"**{pct(samples, 50):.1f}** | {pct(samples, 99):.1f} | {top:.1f} | {answers} |"
        )
    return "\n".join(lines)


def summary(report: dict[str, Any]) -> list[str]:
    tally: Tally = report["tally"]
    c = report["check"]
    total = sum(len(v) for v in tally.latency_ms.values())
    outcomes = ", ".join(f"{n} {s}" for s, n in tally.outcomes.most_common())
    ended = sum(tally.outcomes.values())
    return [
        f"{len(tally.accepted)} requests accepted out of {tally.issued} issued "
        f"({tally.concurrent_retries} of them retried concurrently); {total} HTTP calls in "
        f"{report['load_s']:.1f} s ({total / report['load_s']:.1f} per second); jobs ended: "
        f"{outcomes} ({ended / report['load_s'] * 60:.1f} jobs per minute); "
        f"{tally.bytes_downloaded / 1e6:.1f} MB downloaded"
        + (f"; clients gave up on {len(tally.unfinished)} jobs" if tally.unfinished else "")
        + (
            ". Errors: " + ", ".join(f"{n} x {k.strip()}" for k, n in tally.kinds.most_common())
            if tally.kinds
            else ""
        )
        + ".",
        f"Checks: the API lists {c['listed']} requests, the database holds {c['db_keys']} "
        f"Idempotency-Keys of this run, one row and one job each, and "
        f"{c['created_events']} `deletion_request.created` events; jobs in the database "
        f"{json.dumps(c['db_jobs'])}, attempts {json.dumps(c['attempts'])}, job events per job "
        f"{json.dumps(c['transitions'])}; {c['download_events']} download events, "
        f"{c['versions']} model versions; audit chain of {c['audit_events']} events verified. "
        + (f"**Problems**: {'; '.join(c['problems'])}." if c["problems"] else "No problem found.")
        + (f" Tracebacks in the logs: {report['log_errors']}." if report["log_errors"] else ""),
    ]


def revision() -> str:
    """The commit, and whether the working tree (the code that ran) differs from it."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"`{head}`" + (" with uncommitted changes in the tree" if dirty else "")


def subsection(args: argparse.Namespace, report: dict[str, Any], command: str) -> str:
    before, after = report["load_avg"]
    out = [
        f"### {title(args.backend)}",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- *Setup*: {args.clients} clients, {args.workers} worker process"
        f"{'es' if args.workers > 1 else ''} ({args.torch_threads} torch thread"
        f"{'s' if args.torch_threads > 1 else ''}{' each' if args.workers > 1 else ''}), one "
        f"uvicorn API process; poll every "
        f"{args.poll_interval} s; every {args.reject_every}th request with the default "
        f"thresholds; {report['server']}. Service up in {report['start_s']:.0f} s.",
        f"- *Machine*: {os.cpu_count()}-core CPU ({cpu_name()}, `nproc` {os.cpu_count()}), the "
        f"development machine, shared with other work; Python {platform.python_version()}; "
        f"code at {revision()}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Load average (1/5/15 min) "
        f"{'/'.join(f'{x:.1f}' for x in before)} before and "
        f"{'/'.join(f'{x:.1f}' for x in after)} after the load.",
        "",
        table(report),
        "",
    ]
    for paragraph in summary(report):
        out += [paragraph, ""]
    return "\n".join(wrap(line) for line in out)


INTRO = """\
`bench/load.py` starts the real service on 127.0.0.1 (uvicorn API and Celery worker processes, as
`client.local.LocalService` does) and drives it with concurrent clients over HTTP: each submits a
deletion request with an Idempotency-Key, sends it once more with the same key (right after the
answer, or for every second request at the same moment from a second connection), polls the job
until it ends and downloads the checkpoint of a succeeded job. Each client works on a model of its
own (one tiny digits `tiny_cnn` each), submitting against the version its previous request
produced. Jobs are the cheapest UNSIR that runs every phase (one noise step, ten retain images per
class, one repair epoch) with the acceptance checks off, so most succeed and publish a version; a
few keep the default thresholds and are rejected. Latency is the client's wall-clock time of one
call (the body read); *per second* divides the calls by the whole load phase. Workers, not the
API, bound the throughput: clients wait on their jobs, so polls dominate the calls. Afterwards the
script checks, through the API and in the database, that every accepted request exists once (one
row, one job and one `deletion_request.created` event per Idempotency-Key; the retries named the
same request), that every job ended, and that no answer was a 5xx.
"""


def write_docs(sub: str, backend: str) -> None:
    """Replace this backend's subsection of the section (the section is appended when new)."""
    titles = {name: title(name) for name in BACKENDS}
    write_backend_section(DOCS, SECTION, INTRO, sub, backend, titles)


def title(backend: str) -> str:
    label = BACKENDS[backend]
    return label[0].upper() + label[1:]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="production")
    parser.add_argument("--workers", type=int, default=None, help="production 2, embedded 1")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=200, help="deletion requests in all")
    parser.add_argument("--max-seconds", type=float, default=300, help="no submit after this")
    parser.add_argument(
        "--drain-seconds", type=float, default=120, help="clients poll their last jobs this long"
    )
    parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds")
    parser.add_argument(
        "--reject-every", type=int, default=8, help="every n-th keeps the default thresholds"
    )
    parser.add_argument(
        "--concurrent-retry-every", type=int, default=2, help="every n-th retry at the same time"
    )
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="per worker; default: cores / workers"
    )
    parser.add_argument(
        "--fresh-signing-key", action="store_true", help="let the service create its key"
    )
    parser.add_argument("--admin-url", default=PG_ADMIN, help="a database to CREATE DATABASE from")
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL database")
    parser.add_argument(
        "--keep-logs", action="store_true", help="copy the logs to var/ when they hold a traceback"
    )
    parser.add_argument("--write-docs", action="store_true", help=f"write {SECTION!r}")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()
    if args.workers is None:
        args.workers = 2 if args.backend == "production" else 1
    if args.torch_threads is None:
        args.torch_threads = max(1, (os.cpu_count() or 1) // args.workers)
    if min(args.workers, args.clients, args.requests) < 1:
        raise SystemExit("--workers, --clients and --requests must be at least 1")
    command = " ".join(
        [
            ".venv/bin/python",
            "bench/load.py",
            *documented(sys.argv[1:], ("--write-docs", "--keep-logs")),
        ]
    )
    print(f"nproc {os.cpu_count()}; load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="nepenthe-load-") as tmp:
        report = run(args, Path(tmp))
    print()
    print(table(report))
    print()
    for line in summary(report):
        print(textwrap.fill(line, width=100))
    before, after = report["load_avg"]
    print(f"load average before / after: {before[0]:.2f} / {after[0]:.2f} (nproc {os.cpu_count()})")
    tally: Tally = report["tally"]
    for error in tally.errors[:20]:
        print(f"  error: {error}")
    if args.write_docs:
        write_docs(subsection(args, report, command), args.backend)
        print(f"wrote {SECTION!r} ({args.backend}) in {DOCS.relative_to(ROOT)}")
    if args.out:
        figures = {
            "command": command,
            "backend": args.backend,
            "load_s": report["load_s"],
            "latency_ms": tally.latency_ms,
            "statuses": {op: dict(c) for op, c in tally.statuses.items()},
            "outcomes": dict(tally.outcomes),
            "errors": tally.errors,
            "check": report["check"],
        }
        args.out.write_text(json.dumps(figures, indent=2))
    if report["check"]["problems"] or tally.errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
