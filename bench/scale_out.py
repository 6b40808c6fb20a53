"""Jobs per minute with 1, 2 and 4 worker processes on the production backend.

    .venv/bin/python bench/scale_out.py --write-docs          # 24 jobs at 1, 2 and 4 workers
    .venv/bin/python bench/scale_out.py --workers 1,2 --jobs 12

For each worker count it starts the real service on 127.0.0.1 (``bench/load.py``'s service:
a PostgreSQL database and Redis queues of the run's own, one uvicorn API process, N Celery worker
processes with ``--pool solo``, each with cores / N torch threads), registers the digits dataset
and ``--jobs`` tiny digits models (the tests' ``tiny_cnn``, each its own lineage), runs two
warm-up jobs per worker, then submits one deletion per model at once (the cheapest UNSIR that
runs every phase, acceptance checks off, so every job publishes a version) and waits until every
job has ended; each worker count runs ``--repeat`` times. Throughput is ``--jobs``
divided by the time from the first ``job.queued`` audit event to the last ``job.succeeded``.
While the jobs run it samples the database's connections (``pg_stat_activity``) and the Redis
queue's length. ``--write-docs`` writes the figures in docs/benchmarks.md (the section is
replaced when there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median
from typing import Any

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from load import (  # noqa: E402 - bench/, on the path as the script's folder
    CHEAP_PARAMS,
    OPEN_ACCEPTANCE,
    Service,
    backend_env,
    register,
    revision,
    server_versions,
)
from report import cpu_name, documented, wrap  # noqa: E402

from client.api import NepentheClient  # noqa: E402
from client.databases import PG_ADMIN, REDIS_URL, database_name  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Worker scale-out: jobs per minute with 1, 2 and 4 workers"
NOT_METHOD = {"load", "evaluate_before", "evaluate", "extra_repair", "relearn", "save"}
ENDED = ("job.succeeded", "job.rejected", "job.failed", "job.canceled")


def pg_url(env: dict[str, str]) -> str:
    return env["NEPENTHE_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")


class Sampler(threading.Thread):
    """Every 0.5 s: the database's connections and the task queue's length (their maxima)."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.url, self.name = pg_url(env), database_name(env["NEPENTHE_DATABASE_URL"])
        self.broker, self.queue = env["NEPENTHE_BROKER_URL"], env["NEPENTHE_TASK_QUEUE"]
        self.stop = threading.Event()
        self.connections: list[int] = []
        self.active: list[int] = []
        self.queued: list[int] = []

    def run(self) -> None:
        with (
            psycopg.connect(self.url, autocommit=True) as conn,
            redis.Redis.from_url(self.broker) as broker,
        ):
            while not self.stop.wait(0.5):
                rows = conn.execute(
                    "SELECT state, count(*) FROM pg_stat_activity WHERE datname = %s "
                    "AND pid <> pg_backend_pid() GROUP BY state",
                    (self.name,),
                ).fetchall()
                self.connections.append(sum(n for _, n in rows))
                self.active.append(sum(n for s, n in rows if s and s != "idle"))
                self.queued.append(int(broker.llen(self.queue)))  # type: ignore[arg-type]


def ended_count(env: dict[str, str]) -> int:
    with psycopg.connect(pg_url(env)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM job WHERE status IN ('succeeded', 'rejected', 'failed', "
            "'canceled')"
        ).fetchone()
    return int(row[0]) if row else 0


def figures(env: dict[str, str], prefix: str) -> dict[str, Any]:
    """From the database, for the jobs of requests whose reference starts with ``prefix``: the
    span first queued - last ended, per-job times, statuses."""
    like = (f"{prefix}%",)
    ours = "SELECT id FROM deletion_request WHERE caller_reference LIKE %s"
    with psycopg.connect(pg_url(env)) as conn:
        span = conn.execute(
            "SELECT min(at) FILTER (WHERE action = 'job.queued'), "
            f"max(at) FILTER (WHERE action = ANY(%s)) FROM audit_event WHERE request_id IN "
            f"({ours})",
            (list(ENDED), *like),
        ).fetchone()
        statuses = dict(
            conn.execute(
                f"SELECT status, count(*) FROM job WHERE request_id IN ({ours}) GROUP BY status",
                like,
            ).fetchall()
        )
        jobs = conn.execute(
            "SELECT started_at, finished_at, created_at, metrics FROM job WHERE status = "
            f"'succeeded' AND request_id IN ({ours})",
            like,
        ).fetchall()
    assert span is not None and span[0] is not None and span[1] is not None
    busy = [(f - s).total_seconds() for s, f, _, _ in jobs]  # running -> succeeded
    waited = [(s - c).total_seconds() for s, _, c, _ in jobs]  # created -> running
    method = [
        sum(v for k, v in m["phase_seconds"].items() if k not in NOT_METHOD) for _, _, _, m in jobs
    ]
    return {
        "span_s": (span[1] - span[0]).total_seconds(),
        "statuses": statuses,
        "busy_median_s": median(busy),
        "busy_sum_s": sum(busy),
        "wait_median_s": median(waited),
        "method_median_s": median(method),
    }


def submit(api: NepentheClient, dataset: str, versions: list[str], prefix: str) -> None:
    for i, version in enumerate(versions):
        api.submit_deletion(
            idempotency_key=f"{prefix}{i}",
            model_version_id=version,
            dataset_id=dataset,
            forget_classes=[i % 10],
            method="unsir",
            params={**CHEAP_PARAMS, "seed": i},
            acceptance=OPEN_ACCEPTANCE,
            caller_reference=f"{prefix}{i}",
        )


def wait_ended(env: dict[str, str], count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while ended_count(env) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} jobs not ended after {timeout} s")
        time.sleep(0.25)


def one(args: argparse.Namespace, workers: int, workdir: Path) -> dict[str, Any]:
    args.torch_threads = max(1, (os.cpu_count() or 1) // workers)
    report: dict[str, Any] = {"workers": workers, "torch_threads": args.torch_threads}
    with backend_env(args, workdir) as env:
        service = Service(env, workdir / "logs", workers)
        with service:
            service.wait_workers_ready()
            report["server"] = server_versions(env)
            api = NepentheClient(service.url, service.admin_key)
            dataset, versions = register(api, args.jobs + 2 * workers, workdir, {})
            # Warm-up: a few jobs first, so each worker's first (cold) job is not measured.
            submit(api, dataset, versions[: 2 * workers], "warm-")
            wait_ended(env, 2 * workers, args.timeout)
            sampler = Sampler(env)
            sampler.start()
            load_before = os.getloadavg()
            started = time.perf_counter()
            submit(api, dataset, versions[2 * workers :], "scale-")
            report["submit_s"] = time.perf_counter() - started
            wait_ended(env, args.jobs + 2 * workers, args.timeout)
            report["wall_s"] = time.perf_counter() - started
            report["load_avg"] = (load_before, os.getloadavg())
            sampler.stop.set()
            sampler.join()
            report |= figures(env, "scale-")
            report["connections_max"] = max(sampler.connections, default=0)
            report["connections_active_max"] = max(sampler.active, default=0)
            report["queue_max"] = max(sampler.queued, default=0)
            api.close()
    report["jobs_per_minute"] = args.jobs / report["span_s"] * 60
    return report


# --------------------------------------------------------------------------------------------
# Reporting


def table(reports: list[dict[str, Any]]) -> list[str]:
    ones = [r["jobs_per_minute"] for r in reports if r["workers"] == 1]
    base = median(ones) if ones else 1.0
    lines = [
        "| workers | torch threads each | jobs | submitting (s) | first queued → last ended (s) "
        "| jobs per minute | vs 1 worker | a job on its worker, median (s) | of which the method "
        "(s) | waited in the queue, median (s) | DB connections, max (active) | queue length, "
        "max |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(
            f"| {r['workers']} | {r['torch_threads']} | {sum(r['statuses'].values())} | "
            f"{r['submit_s']:.1f} | {r['span_s']:.1f} | **{r['jobs_per_minute']:.0f}** | "
            f"{r['jobs_per_minute'] / base:.2f}x | {r['busy_median_s']:.2f} | "
            f"{r['method_median_s']:.2f} | {r['wait_median_s']:.1f} | "
            f"{r['connections_max']} ({r['connections_active_max']}) | {r['queue_max']} |"
        )
    return lines


def subsection(args: argparse.Namespace, reports: list[dict[str, Any]], command: str) -> str:
    loads = "; ".join(
        f"{r['workers']} worker{'s' if r['workers'] > 1 else ''}: "
        + "/".join(f"{x:.1f}" for x in r["load_avg"][1])
        for r in reports
    )
    out = [
        SECTION,
        "",
        "`bench/scale_out.py` starts the real service on the production backend (a PostgreSQL "
        "database and Redis queues of the run's own, one uvicorn API process) with N Celery worker "
        "processes (`--pool solo --concurrency 1`, cores / N torch threads each), registers "
        f"{args.jobs} digits `tiny_cnn` models (each its own lineage), submits one deletion per "
        "model from one client as fast as the API answers (the cheapest UNSIR that runs every "
        "phase, acceptance checks off, so each publishes a version) and counts jobs per minute "
        "from the first `job.queued` to the last `job.succeeded`; two jobs per worker run "
        "first, unmeasured, so no worker's first (cold) job is counted; each worker count "
        f"runs {args.repeat} times, each row one run. *A job on its worker* runs from "
        "`job.running` to `job.succeeded`; "
        "connections are the run's database's in `pg_stat_activity` (the API's, the workers' and "
        "their heartbeat and sweeper threads'), sampled every 0.5 s.",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- *Machine*: {os.cpu_count()}-core CPU ({cpu_name()}, `nproc` {os.cpu_count()}), the "
        f"development machine; {reports[0]['server'] if reports else ''}; Python "
        f"{platform.python_version()}; code at {revision()}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Load average (1/5/15 min) after "
        f"each run: {loads}.",
        "",
        *table(reports),
        "",
    ]
    return "\n".join(wrap(line) for line in out) + "\n"


def write_docs(text: str) -> None:
    """Replace the section (up to the next ``## ``), or append it; a hand-written
    ``### Findings`` subsection in it is kept."""
    doc = DOCS.read_text()
    marker = f"\n{SECTION}\n"
    start = doc.find(marker)
    if start == -1:
        DOCS.write_text(doc.rstrip("\n") + "\n\n" + text)
        return
    end = doc.find("\n## ", start + len(marker))
    old = doc[start + 1 : end + 1] if end != -1 else doc[start + 1 :]
    kept = old[old.find("\n### Findings") + 1 :] if "\n### Findings" in old else ""
    rest = doc[end + 1 :] if end != -1 else ""
    new = text + ("\n" + kept.rstrip("\n") + "\n" if kept else "")
    DOCS.write_text(doc[: start + 1] + new + ("\n" + rest if rest else ""))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument("--jobs", type=int, default=24, help="jobs per worker count")
    parser.add_argument("--repeat", type=int, default=2, help="runs per worker count")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per worker count")
    parser.add_argument("--admin-url", default=PG_ADMIN, help="a database to CREATE DATABASE from")
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL databases")
    parser.add_argument("--write-docs", action="store_true", help=f"write {SECTION!r}")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()
    args.backend = "production"
    args.fresh_signing_key = False
    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    command = " ".join(
        [".venv/bin/python", "bench/scale_out.py", *documented(sys.argv[1:], ("--write-docs",))]
    )
    reports = []
    for n in [n for n in counts for _ in range(args.repeat)]:
        with tempfile.TemporaryDirectory(prefix="nepenthe-scale-") as tmp:
            r = one(args, n, Path(tmp))
        reports.append(r)
        print(
            f"{n} worker(s): {r['jobs_per_minute']:.1f} jobs/min ({args.jobs} jobs in "
            f"{r['span_s']:.1f} s; {r['statuses']}); connections max {r['connections_max']}",
            flush=True,
        )
    print()
    for line in table(reports):
        print(line)
    if args.write_docs:
        write_docs(subsection(args, reports, command))
        print(f"wrote {SECTION!r} in {DOCS.relative_to(ROOT)}")
    if args.out:
        args.out.write_text(json.dumps(reports, indent=2, default=str))


if __name__ == "__main__":
    main()
