"""The API at capacity: every hot route at rising concurrency, by wrk, against the floor.

    .venv/bin/python bench/capacity.py --write-docs                     # production backend
    .venv/bin/python bench/capacity.py --backend embedded --write-docs  # SQLite

It starts the real service on 127.0.0.1 (one uvicorn API process, one Celery worker, as
`client.local.LocalService` does), registers the tests' digits `tiny_cnn` and a torchvision
ResNet-18 (random weights, a 45 MB checkpoint), runs one cheap class deletion to its end, stops
the worker (submitted jobs then wait in the queue and take no CPU), and measures with wrk
(Debian's `wrk`, written in C) at each concurrency of ``--levels`` for ``--seconds``:

- ``GET /livez``: the floor, a route that answers a constant with no key and no database;
- ``GET /v1/jobs/{id}``: a status poll of the finished job (its metrics included);
- ``POST /v1/deletion-requests``: a class deletion under a new Idempotency-Key each time (a Lua
  script numbers them);
- ``GET /v1/deletion-requests``: the first page (100) of the requests the submissions made;
- ``GET /v1/audit/events?action=deletion_request.created``: the first page of an audit query;
- ``GET /v1/models/{id}/versions/1/checkpoint``: the ResNet-18 download (MB/s), against this
  process reading the same stored file.

The API and the worker are pinned to core 0 and wrk to core 1 (``taskset``), so the load
generator never takes the API's CPU; wrk's own CPU time is reported beside the API's. Per level:
requests per second, p50 and p99 latency (wrk's), and the API process's CPU time per request
(from /proc). Then, in this process against the same database, the SQL statements each route
issues (SQLAlchemy's ``before_cursor_execute``). Last, how the poll and the floor scale with API
processes: uvicorn with 1 and then 2 processes, nothing pinned (the API, wrk and the database
share both cores). ``--write-docs`` puts the tables in docs/benchmarks.md (one subsection per
backend, replaced when there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from load import BACKENDS, CHEAP_PARAMS, OPEN_ACCEPTANCE, backend_env, revision, server_versions  # noqa: E402
from report import cpu_name, documented, wrap  # noqa: E402

from client.api import NepentheClient  # noqa: E402
from client.local import LocalService  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## API capacity: the hot routes against the floor"
TICKS = os.sysconf("SC_CLK_TCK")


def pin(pid: int, core: int) -> None:
    """Every thread of ``pid`` on ``core`` (uvicorn's thread pool included)."""
    subprocess.run(
        ["taskset", "-a", "-p", "-c", str(core), str(pid)], check=True, capture_output=True
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def latency_ms(text: str, quantile: str) -> float:
    found = re.search(rf"^\s+{quantile}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if found is None:
        raise RuntimeError(f"no {quantile}% line in wrk's output:\n{text}")
    return float(found.group(1)) * UNITS[found.group(2)]


UNITS_BYTES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


def wrk(
    url: str,
    connections: int,
    seconds: float,
    headers: dict[str, str],
    script: Path | None = None,
    core: int | None = 1,
) -> dict[str, Any]:
    pinned = ["taskset", "-c", str(core)] if core is not None else []
    command = [*pinned, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s"]
    command += ["--latency", "--timeout", "10s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    before = children_cpu()
    done = subprocess.run([*command, url], capture_output=True, text=True, check=True)
    spent = children_cpu() - before
    out = done.stdout
    total = re.search(r"^\s+(\d+) requests in", out, re.M)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    transfer = re.search(r"^Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", out, re.M)
    if total is None or rate is None or transfer is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}\n{done.stderr}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)$", out, re.M)
    return {
        "requests": int(total.group(1)),
        "per_s": float(rate.group(1)),
        "mb_per_s": float(transfer.group(1)) * UNITS_BYTES[transfer.group(2)] / 1e6,
        "p50_ms": latency_ms(out, "50"),
        "p99_ms": latency_ms(out, "99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1).strip() if socket_errors else "",
        "wrk_cpu_s": spent,
    }


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (uvicorn's supervisor and its processes)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return cpu_seconds(pid) + sum(cpu_seconds(int(child)) for child in children)


PROFILES = ROOT / "var" / "profiles"  # py-spy's collapsed stacks, for flamegraph.pl or speedscope
LAYERS = (  # (label, where a frame's file lies), the first that matches names a sample
    ("PostgreSQL driver (psycopg)", ("psycopg",)),
    ("SQLite driver", ("sqlite3/",)),
    ("SQLAlchemy (ORM, Core, pool)", ("sqlalchemy/",)),
    ("pydantic (validation, serialization)", ("pydantic/", "pydantic_core/")),
    ("JSON encoding", ("json/",)),
    ("FastAPI, Starlette", ("fastapi/", "starlette/")),
    ("thread hand-offs (anyio, threading)", ("anyio/", "threading.py", "concurrent/")),
    ("uvicorn, event loop", ("uvicorn/", "asyncio/", "uvloop/", "httptools/", "selectors.py")),
    ("Nepenthe's code (app/)", ("app/",)),
    ("Redis, Celery, kombu", ("redis/", "celery/", "kombu/")),
    ("hashing, signing", ("hashlib.py", "cryptography/")),
)


def profile(pid: int, url: str, route: Route, seconds: float, out: Path) -> dict[str, Any]:
    """py-spy samples of the API process (of the thread holding the GIL) while wrk drives
    ``route`` at 4 connections: the share of samples by the layer of the innermost frame, and
    the project's functions by the share of samples they are on the stack of (inclusive)."""
    command = [py_spy(), "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--gil"]
    command += ["--duration", str(int(seconds) + 1), "--output", str(out), "--nonblocking"]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # py-spy attached
    wrk(url + route.path, 4, seconds, route.headers, route.script)
    spy.wait(timeout=60)
    layers: dict[str, int] = {}
    functions: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, n = stack.split(";"), int(count)
        total += n
        layer = layer_of(frames[-1])
        layers[layer] = layers.get(layer, 0) + n
        for name in {project_function(f) for f in frames if in_project(f)}:
            functions[name] = functions.get(name, 0) + n
    share = {k: v / max(total, 1) for k, v in sorted(layers.items(), key=lambda kv: -kv[1])}
    top = sorted(functions.items(), key=lambda kv: -kv[1])[:8]
    return {"samples": total, "layers": share, "app": [(k, v / max(total, 1)) for k, v in top]}


def py_spy() -> str:
    """py-spy on the PATH, else beside this Python (the dev extra in a virtual environment)."""
    return shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))


def file_of(frame: str) -> str:
    """The file of py-spy's ``function (path:line)``, as py-spy shortens it (``json/encoder.py``,
    ``app/jobs/service.py``)."""
    return frame.rpartition(" (")[2].rstrip(")").rpartition(":")[0]


def layer_of(frame: str) -> str:
    path = file_of(frame)
    for label, places in LAYERS:
        if any(path.startswith(place) or f"/{place}" in path for place in places):
            return label
    return "other (Python's library)"


def in_project(frame: str) -> bool:
    path = file_of(frame)
    return path.startswith("app/") or "/app/" in path


def project_function(frame: str) -> str:
    """``function (app/x/y.py:line)`` as ``function (app/x/y.py)``."""
    path = file_of(frame)
    return f"{frame.rpartition(' (')[0]} ({path[path.find('app/') :]})"


@dataclass
class Route:
    key: str
    label: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    script: Path | None = None
    levels: list[int] | None = None  # None: --levels


def measure(
    api_pid: int,
    base: str,
    route: Route,
    levels: list[int],
    seconds: float,
    core: int | None = 1,
) -> list[dict[str, Any]]:
    rows = []
    url = base + route.path
    wrk(url, 4, 2, route.headers, route.script, core)  # warm-up: connections, caches, the pool
    for connections in route.levels or levels:
        api_before = tree_cpu(api_pid)
        row = wrk(url, connections, seconds, route.headers, route.script, core)
        api = tree_cpu(api_pid) - api_before
        row |= {"connections": connections, "api_cpu_ms": 1e3 * api / max(row["requests"], 1)}
        row["wrk_cpu_ms"] = 1e3 * row["wrk_cpu_s"] / max(row["requests"], 1)
        print(
            f"  c={connections:<4} {row['per_s']:8.0f}/s  p50 {row['p50_ms']:7.2f} ms  "
            f"p99 {row['p99_ms']:7.2f} ms  API {row['api_cpu_ms']:.2f} ms CPU/req  "
            f"wrk {row['wrk_cpu_ms']:.3f} ms CPU/req  {row['mb_per_s']:.1f} MB/s  "
            f"non-2xx {row['non_2xx']}  {row['socket_errors']}"
        )
        rows.append(row)
    return rows


def statements_per_call(
    env: dict[str, str], routes: list[Route], submission: str
) -> dict[str, int]:
    """SQL statements one call of each route issues, counted in this process on the same
    database (a submission: one more, under a key of its own)."""
    os.environ.update(env)
    from fastapi.testclient import TestClient
    from sqlalchemy import event

    from app.db import get_engine
    from app.main import create_app
    from client.databases import reset_caches

    reset_caches()
    counted: list[str] = []

    def count(*args: Any) -> None:
        counted.append(args[2])

    url = env["NEPENTHE_DATABASE_URL"]
    found = {}
    with TestClient(create_app()) as client:

        def call(route: Route) -> int:
            if route.script is None:
                return client.get(route.path, headers=route.headers).status_code
            headers = route.headers | {
                "Idempotency-Key": str(uuid.uuid4()),
                "Content-Type": "application/json",
            }
            return client.post(route.path, content=submission, headers=headers).status_code

        # On PostgreSQL the read-only engine is the same engine in autocommit, whose events
        # are the engine's own: count on it once.
        engines = [get_engine()] + ([get_engine(read_only=True)] if "sqlite" in url else [])
        for route in routes:
            if route.key == "floor":
                continue
            assert call(route) < 300  # warm
            for engine in engines:
                event.listen(engine, "before_cursor_execute", count)
            status = call(route)
            for engine in engines:
                event.remove(engine, "before_cursor_execute", count)
            assert status < 300, status
            found[route.key] = len(counted)
            counted.clear()
    return found


def finished_job(api: NepentheClient, workdir: Path) -> tuple[str, dict[str, Any]]:
    from tests.e2e.test_service import register

    reg = register(api, workdir)  # the tests' trained digits tiny_cnn and the digits dataset
    version, dataset = reg["version"], reg["dataset"]
    body = {
        "model_version_id": version["id"],
        "dataset_id": dataset["id"],
        "forget_classes": [3],
        "method": "unsir",
        "params": CHEAP_PARAMS,
        "acceptance": OPEN_ACCEPTANCE,
    }
    request, _ = api.submit_deletion(idempotency_key=str(uuid.uuid4()), **body)
    job = api.wait(request["job"]["id"], timeout=300)
    print(f"job {job['id']} {job['status']}")
    # Submissions go to the version the job published (the first is superseded): class 5.
    later = body | {"model_version_id": job["output_version"]["id"], "forget_classes": [5]}
    return str(job["id"]), later


def large_checkpoint(api: NepentheClient, workdir: Path) -> tuple[str, int, Path]:
    """A torchvision ResNet-18 (random weights) registered and uploaded: its id, size, file."""
    import safetensors.torch

    from unlearning.architectures import build_classifier

    path = workdir / "resnet18.safetensors"
    safetensors.torch.save_file(build_classifier("resnet18", 10).state_dict(), str(path))
    model = api.register_model(
        name="resnet18",
        task="classification",
        architecture={"name": "resnet18"},
        input_shape=[3, 32, 32],
        normalization={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        class_names=[str(i) for i in range(10)],
    )
    api.upload_version(model["id"], path)
    return str(model["id"]), path.stat().st_size, path


def read_speed(path: Path, rounds: int = 5) -> float:
    """MB/s of reading ``path`` in 1 MiB chunks here (the page cache, as the API reads it)."""
    start = time.perf_counter()
    for _ in range(rounds):
        with path.open("rb") as fh:
            while fh.read(1 << 20):
                pass
    return rounds * path.stat().st_size / (time.perf_counter() - start) / 1e6


SUBMIT_LUA = """
local n = 0
request = function()
  n = n + 1
  wrk.headers["Idempotency-Key"] = "{prefix}-" .. n
  return wrk.format("POST", nil, nil, nil)
end
"""


def submission_script(workdir: Path, body: str) -> Path:
    path = workdir / "submit.lua"
    prefix = uuid.uuid4().hex
    # wrk.body and the content type are set once; each request gets its own key.
    lua = f"wrk.method = 'POST'\nwrk.body = {json.dumps(body)}\n"
    lua += 'wrk.headers["Content-Type"] = "application/json"\n'
    path.write_text(lua + SUBMIT_LUA.replace("{prefix}", prefix))
    return path


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    load_args = argparse.Namespace(
        backend=args.backend,
        torch_threads=1,
        fresh_signing_key=False,
        admin_url=args.admin_url,
        redis_url=args.redis_url,
        keep=False,
    )
    report: dict[str, Any] = {"backend": args.backend, "levels": args.levels}
    with backend_env(load_args, workdir) as env:
        with LocalService(env, ROOT, workdir / "logs", org="capacity") as service:
            assert service.api is not None and service.worker is not None
            pin(service.api.pid, 0)
            pin(service.worker.pid, 0)
            admin = NepentheClient(service.url, service.admin_key)
            job_id, body = finished_job(admin, workdir)
            model_id, size, stored = large_checkpoint(admin, workdir)
            key = admin.create_key("capacity", ["submit", "download", "audit"])["token"]
            admin.close()
            service.stop_worker()  # queued jobs now wait and take no CPU
            auth = {"Authorization": f"Bearer {key}"}
            submission = json.dumps(body)
            routes = [
                Route("floor", "`GET /livez` (floor)", "/livez"),
                Route("poll", "`GET /v1/jobs/{id}`", f"/v1/jobs/{job_id}", auth),
                Route(
                    "submit",
                    "`POST /v1/deletion-requests`",
                    "/v1/deletion-requests",
                    auth,
                    submission_script(workdir, submission),
                ),
                Route("list", "`GET /v1/deletion-requests`", "/v1/deletion-requests", auth),
                Route(
                    "audit",
                    "`GET /v1/audit/events?action=…created`",
                    "/v1/audit/events?action=deletion_request.created",
                    auth,
                ),
                Route(
                    "download",
                    f"`GET …/checkpoint` ({size / 1e6:.0f} MB)",
                    f"/v1/models/{model_id}/versions/1/checkpoint",
                    auth,
                    levels=[1, 4, 16],
                ),
            ]
            report["server"] = server_versions(env)
            report["load_before"] = os.getloadavg()
            report["routes"] = {r.key: r.label for r in routes}
            for route in routes:
                print(route.label)
                report[route.key] = measure(
                    service.api.pid, service.url, route, args.levels, args.seconds
                )
            report["load_after"] = os.getloadavg()
            if args.profile:
                PROFILES.mkdir(parents=True, exist_ok=True)
                report["profiles"] = {
                    r.key: profile(
                        service.api.pid,
                        service.url,
                        r,
                        args.seconds,
                        PROFILES / f"{args.backend}-{r.key}.txt",
                    )
                    for r in routes[1:]
                }
            report["disk_mb_s"] = read_speed(stored_file(env, stored))
            report["requests_made"] = sum(r["requests"] for r in report["submit"])
            report["scaling"] = scaling(service, routes[:2], args)
            report["statements"] = statements_per_call(env, routes, submission)
            print(f"SQL statements per call: {report['statements']}")
    return report


def stored_file(env: dict[str, str], uploaded: Path) -> Path:
    """The largest file of the store (the ResNet-18 as stored), else the uploaded file."""
    store = Path(env.get("NEPENTHE_STORE_DIR", ""))
    files = [p for p in store.rglob("*") if p.is_file()] if store.is_dir() else []
    return max(files, key=lambda p: p.stat().st_size) if files else uploaded


def scaling(
    service: LocalService, routes: list[Route], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The floor and the poll with 1 and 2 API processes, nothing pinned."""
    rows = []
    for processes in (1, 2):
        service.stop_api()
        service.start_api(processes=processes)
        assert service.api is not None
        for route in routes:
            print(f"{processes} API process(es), unpinned: {route.label}")
            for row in measure(service.api.pid, service.url, route, [16], args.seconds, core=None):
                rows.append(row | {"processes": processes, "route": route.key})
    return rows


def table(report: dict[str, Any]) -> str:
    lines = [
        "| route | connections | requests/s | p50 ms | p99 ms | API CPU ms/request "
        "| wrk CPU ms/request | MB/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, label in report["routes"].items():
        for row in report[key]:
            errors = f" ({row['non_2xx']} non-2xx)" if row["non_2xx"] else ""
            if row["socket_errors"]:
                errors += f" (socket errors: {row['socket_errors']})"
            lines.append(
                f"| {label} | {row['connections']} | {row['per_s']:,.0f}{errors} | "
                f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['api_cpu_ms']:.2f} | "
                f"{row['wrk_cpu_ms']:.3f} | {row['mb_per_s']:,.1f} |"
            )
    return "\n".join(lines)


def scaling_table(report: dict[str, Any]) -> str:
    lines = [
        "| API processes | route | connections | requests/s | p50 ms | p99 ms "
        "| API CPU ms/request |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["scaling"]:
        lines.append(
            f"| {row['processes']} | {report['routes'][row['route']]} | {row['connections']} | "
            f"{row['per_s']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{row['api_cpu_ms']:.2f} |"
        )
    return "\n".join(lines)


def verdict(report: dict[str, Any], key: str, target: float) -> str:
    best = max(report[key], key=lambda r: r["per_s"])
    within = [r for r in report[key] if r["p99_ms"] < 50]
    best_within = max(within, key=lambda r: r["per_s"]) if within else None
    met = best_within is not None and best_within["per_s"] >= target
    said = (
        f"at best {best['per_s']:,.0f}/s ({best['connections']} connections, p99 "
        f"{best['p99_ms']:.1f} ms)"
    )
    if best_within is not None:
        said += f", {best_within['per_s']:,.0f}/s with p99 under 50 ms"
    return (
        said
        + f": the target of {target:,.0f}/s with p99 under 50 ms is "
        + ("met." if met else "**missed**.")
    )


def subsection(args: argparse.Namespace, report: dict[str, Any], command: str) -> str:
    floor = max(report["floor"], key=lambda r: r["per_s"])
    download = max(report["download"], key=lambda r: r["mb_per_s"])
    before, after = report["load_before"], report["load_after"]
    statements = ", ".join(
        f"{report['routes'][k].split('`')[1]} {n}" for k, n in report["statements"].items()
    )
    out = [
        f"### {BACKENDS[args.backend][0].upper()}{BACKENDS[args.backend][1:]}",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- *Setup*: one uvicorn API process pinned to core 0, wrk pinned to core 1, "
        f"{args.seconds:g} s per level after a 2 s warm-up; the worker stopped after the first "
        f"job (the {report['requests_made']:,} submitted jobs wait in the queue); "
        f"{report['server']}.",
        f"- *Machine*: {os.cpu_count()}-core CPU ({cpu_name()}), the development machine; "
        f"Python {platform.python_version()}; code at {revision()}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Load average "
        f"{'/'.join(f'{x:.1f}' for x in before)} before, "
        f"{'/'.join(f'{x:.1f}' for x in after)} after.",
        "",
        table(report),
        "",
        f"SQL statements per call: {statements}.",
        "",
        f"Status polls: {verdict(report, 'poll', 1500)} Submissions: "
        f"{verdict(report, 'submit', 300)} The floor: {floor['per_s']:,.0f} constant answers/s. "
        f"Downloads: at best {download['mb_per_s']:,.0f} MB/s against "
        f"{report['disk_mb_s']:,.0f} MB/s for this process reading the same stored file "
        f"(page cache).",
        "",
        "With more API processes (uvicorn `--workers`), nothing pinned: the API, wrk and the "
        "database share the two cores.",
        "",
        scaling_table(report),
        "",
        *profile_tables(report),
    ]
    return "\n".join(wrap(line) if not line.startswith("|") else line for line in out)


def profile_tables(report: dict[str, Any]) -> list[str]:
    """Where the API's CPU went per route, from py-spy (``--profile``)."""
    profiles = report.get("profiles")
    if not profiles:
        return []
    labels = list(dict.fromkeys(k for p in profiles.values() for k in p["layers"]))
    names = [report["routes"][k].split("`")[1] for k in profiles]
    out = [
        "Where the API's CPU goes (`--profile`: py-spy at 250 Hz on the API process while wrk "
        "drives the route at 4 connections, sampling the thread that holds the GIL; the share of "
        "samples by the layer of the innermost frame):",
        "",
        "| layer | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for label in labels:
        cells = [f"{100 * p['layers'].get(label, 0.0):.0f}%" for p in profiles.values()]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("| samples | " + " | ".join(f"{p['samples']:,}" for p in profiles.values()) + " |")
    out += [
        "",
        "The project's functions on the stack of most samples (inclusive; the stacks themselves "
        f"are in `var/profiles/{report['backend']}-<route>.txt`, py-spy's collapsed format, for "
        "flamegraph.pl or speedscope):",
        "",
    ]
    for key, p in profiles.items():
        top = ", ".join(f"`{name}` {100 * share:.0f}%" for name, share in p["app"][:6])
        out.append(f"- {report['routes'][key].split('`')[1]}: {top}.")
    out.append("")
    return out


def write_docs(sub: str) -> None:
    """Replace this backend's subsection of the section (the section is appended when new)."""
    doc = DOCS.read_text()
    heading = sub.split("\n", 1)[0]
    start = doc.find(f"\n{SECTION}\n")
    if start == -1:
        DOCS.write_text(doc.rstrip("\n") + f"\n\n{SECTION}\n\n{INTRO}\n{sub}")
        return
    end = doc.find("\n## ", start + 1)
    section = doc[start + 1 : end + 1] if end != -1 else doc[start + 1 :]
    parts = section.split("\n### ")
    kept = [p for p in parts[1:] if f"### {p.split(chr(10), 1)[0]}" != heading]
    body = "".join(f"\n### {p.rstrip(chr(10))}\n" for p in kept) + "\n" + sub
    new = parts[0].rstrip("\n") + "\n" + body
    DOCS.write_text(doc[: start + 1] + new + (doc[end:] if end != -1 else ""))


INTRO = """\
`bench/capacity.py` measures what the API itself can take, with a load generator that is not the
bottleneck: wrk (C, Debian's package) on its own core, the API on the other. The floor is the same
process answering `GET /livez` (a constant, no key, no database): what uvicorn and the middleware
stack cost before any work of the route.
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="production")
    parser.add_argument(
        "--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64]
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--admin-url", default=os.environ.get("NEPENTHE_TEST_PG_ADMIN", ""))
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy each route at 4 connections (needs py-spy)"
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if args.profile and not Path(py_spy()).is_file():
        raise SystemExit("py-spy is missing: pip install py-spy (the dev extra has it)")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    from client.databases import PG_ADMIN

    args.admin_url = args.admin_url or PG_ADMIN
    workdir = Path(tempfile.mkdtemp(prefix="nepenthe-capacity-"))
    try:
        report = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    command = " ".join(["python bench/capacity.py", *documented(sys.argv[1:], ("--write-docs",))])
    sub = subsection(args, report, command + " --write-docs")
    print(sub)
    if args.write_docs:
        write_docs(sub)


if __name__ == "__main__":
    main()
