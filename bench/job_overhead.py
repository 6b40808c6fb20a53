"""Where a job's time goes outside its method: from ``job.queued`` to ``job.succeeded``.

    .venv/bin/python bench/job_overhead.py --write-docs                       # production, ~6 min
    .venv/bin/python bench/job_overhead.py --backend embedded --write-docs    # SQLite
    .venv/bin/python bench/job_overhead.py --large-jobs 0                     # small jobs only

It starts the real service on 127.0.0.1 with one worker process (``bench/load.py``'s service and
settings: ``--backend production`` is PostgreSQL + Redis, ``--backend embedded`` SQLite and the
filesystem:// broker), registers two models and runs their jobs one after another, each on the
version the previous one produced, as a data-protection team would:

- *small*: the tests' digits ``tiny_cnn`` (scikit-learn digits, 8x8), the cheapest UNSIR that runs
  every phase (``bench/load.py``'s ``CHEAP_PARAMS``), acceptance checks off so it publishes;
- *large*: a ``tiny_cnn`` of width 16 trained here for one epoch on Fashion-MNIST (60,000 28x28
  images; ``scripts/fashion_mnist.sh var/data`` first), UNSIR with the official defaults and
  ``--large-repair-epochs`` repair epochs, sized so that the method takes about a minute on a
  2-core CPU.

Each backend runs twice: with the worker's cache off (``NEPENTHE_WORKER_CACHE_BYTES=0``, as
before the cache existed) and on (the default), a fresh worker process each time, so the first
job of each run is the worker's first (a cold process). For every job it reads the audit events
``job.queued`` and ``job.succeeded`` (stamped as their transactions commit) and the job's
``metrics.timings`` and ``metrics.phase_seconds``, and splits the time between them into: the
hand-over (``job.queued`` to the worker's task starting: the API's send after commit, the broker,
the worker's dispatch), the claim, reading the job's rows, fetching the weights from the store,
the recipe's load (network, weights, dataset, evaluation sets), measuring before, **the method**,
measuring after (the acceptance gate's figures), the rest of the recipe (weight distances, cost
summary), saving the checkpoint to the store, and the record (the version, the signed
certificate, the supersession marks and the last transition with its audit events, up to the
moment ``job.succeeded`` is stamped). Overhead is everything but the method. ``--write-docs``
writes the figures in docs/benchmarks.md (one subsection per backend, replaced when there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from load import (  # noqa: E402 - bench/, on the path as the script's folder
    BACKENDS,
    CHEAP_PARAMS,
    OPEN_ACCEPTANCE,
    Service,
    backend_env,
    revision,
    server_versions,
    title,
)
from report import cpu_name, documented, wrap, write_backend_section  # noqa: E402

from client.api import TERMINAL, NepentheClient  # noqa: E402
from client.databases import PG_ADMIN, REDIS_URL  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Job overhead: from `job.queued` to `job.succeeded`"
FASHION_ARCH = {"name": "tiny_cnn", "args": {"in_channels": 1, "width": 16}}
FASHION_NORM = {"mean": [0.2860], "std": [0.3530]}
NOT_METHOD = {"load", "evaluate_before", "evaluate", "extra_repair", "relearn", "save"}
# (column, what it holds), in the order a job spends them
PARTS = [
    ("handover", "hand-over"),
    ("claim", "claim"),
    ("context", "job's rows"),
    ("fetch", "weights fetch"),
    ("load", "recipe load"),
    ("evaluate_before", "measure before"),
    ("method", "**method**"),
    ("evaluate", "measure after"),
    ("recipe_rest", "recipe rest"),
    ("save", "save checkpoint"),
    ("record", "record"),
]


# --------------------------------------------------------------------------------------------
# Models


def train_fashion(root: Path, threads: int) -> dict[str, Any]:
    """A width-16 tiny_cnn, one epoch on Fashion-MNIST's training split (Adam 3e-3, batch 128)."""
    import numpy as np
    import torch

    from unlearning import architectures, data
    from unlearning.train import train_classifier

    torch.set_num_threads(threads)
    train = data.open_split("fashion_mnist", str(root), "train")
    torch.manual_seed(0)
    model = architectures.build_classifier(FASHION_ARCH["name"], 10, FASHION_ARCH["args"])
    spec = data.InputSpec((1, 28, 28), (0.2860,), (0.3530,))
    train_classifier(model, train, np.arange(len(train)), spec, epochs=1, lr=3e-3, batch_size=128)
    return {"state": model.state_dict(), "classes": list(train.classes)}


def register_datasets(api: NepentheClient, fashion: Path | None) -> dict[str, str]:
    out = {"small": api.register_dataset("digits", "sklearn_digits")["id"]}
    if fashion is not None:
        out["large"] = api.register_dataset("fashion", "fashion_mnist", str(fashion))["id"]
    return out


def register_models(
    api: NepentheClient, workdir: Path, run: int, fashion: dict[str, Any] | None
) -> dict[str, str]:
    """A digits model (and a Fashion-MNIST one) with one version each, for one run: the first
    versions' ids. Each run's weights are shifted by a tiny offset of its own, since a deletion
    supersedes every version of the organisation with the same weights."""
    import safetensors.torch

    from tests.helpers import ARCH, CLASS_NAMES, trained_state

    def upload(model: dict[str, Any], state: dict[str, Any], name: str) -> str:
        own = {k: v + run * 1e-5 if v.is_floating_point() else v for k, v in state.items()}
        path = workdir / f"{name}.safetensors"
        safetensors.torch.save_file(own, str(path))
        return str(api.upload_version(model["id"], path)["id"])

    small = api.register_model(
        name=f"digits-cnn-{run}",
        task="classification",
        architecture=ARCH,
        input_shape=[1, 8, 8],
        normalization={"mean": [0.5], "std": [0.5]},
        class_names=CLASS_NAMES,
    )
    out = {"small": upload(small, trained_state(), f"digits-{run}")}
    if fashion is not None:
        large = api.register_model(
            name=f"fashion-cnn-{run}",
            task="classification",
            architecture=FASHION_ARCH,
            input_shape=[1, 28, 28],
            normalization=FASHION_NORM,
            class_names=fashion["classes"],
        )
        out["large"] = upload(large, fashion["state"], f"fashion-{run}")
    return out


def restart_worker(service: Service, env: dict[str, str], log_dir: Path) -> None:
    """The service's worker process replaced by a fresh one with ``env``'s settings."""
    from client.local import stop_process

    for proc in service.workers:
        stop_process(proc, signal.SIGTERM)
    service.workers.clear()
    service.env.update(env)
    service.log_dir = log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    service.start_worker()
    service.wait_workers_ready()


# --------------------------------------------------------------------------------------------
# One job and its breakdown


def at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run_job(
    api: NepentheClient, version: str, dataset: str, params: dict[str, Any], forget: int
) -> dict[str, Any]:
    """Submit a deletion of class ``forget``, wait for its job to end; the job and the times
    of its audit events."""
    request, _ = api.submit_deletion(
        idempotency_key=f"overhead-{time.time_ns()}",
        model_version_id=version,
        dataset_id=dataset,
        forget_classes=[forget % 10],
        method="unsir",
        params=params,
        acceptance=OPEN_ACCEPTANCE,
        caller_reference=f"overhead-{forget}",
    )
    job_id = request["job"]["id"]
    while True:
        job = api.get_job(job_id)
        if job["status"] in TERMINAL:
            break
        time.sleep(0.3)
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
    events = {e["action"]: e["at"] for e in api.audit(request_id=request["id"])}
    return {"job": job, "events": events}


def breakdown(job: dict[str, Any], events: dict[str, str]) -> dict[str, float]:
    """Seconds of each part, from ``job.queued`` to ``job.succeeded`` (they add up to total)."""
    m = job["metrics"]
    t, phases, loads = m["timings"], m["phase_seconds"], m["load_seconds"]
    queued, succeeded = at(events["job.queued"]), at(events["job.succeeded"])
    received, recording = at(t["received_at"]), at(t["record_started_at"])
    method = sum(v for k, v in phases.items() if k not in NOT_METHOD)
    load = phases["load"] - t["fetch_s"]  # the worker adds its fetch to the recipe's load
    recipe_timed = (
        load
        + method
        + sum(
            phases.get(k, 0.0) for k in ("evaluate_before", "evaluate", "extra_repair", "relearn")
        )
    )
    parts = {
        "handover": received - queued,
        "claim": t["claim_s"],
        "context": t["context_s"],
        "fetch": t["fetch_s"],
        "load": load,
        "evaluate_before": phases.get("evaluate_before", 0.0),
        "method": method,
        "evaluate": phases.get("evaluate", 0.0) + phases.get("extra_repair", 0.0),
        "recipe_rest": t["recipe_s"] - recipe_timed,
        "save": t["store_s"],
        "record": succeeded - recording,
    }
    total = succeeded - queued
    parts["between"] = total - sum(parts.values())  # heartbeat start, untimed glue
    parts["total"] = total
    parts["overhead"] = total - method
    parts["progress_writes"] = float(t["progress_writes"])
    parts["progress_write_s"] = t["progress_write_s"]
    for name, seconds in loads.items():
        parts[f"load_{name}"] = seconds
    parts["cache_dataset"] = m["worker_cache"]["dataset"]  # type: ignore[assignment]
    return parts


# --------------------------------------------------------------------------------------------
# The runs


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"backend": args.backend, "runs": {}, "load_avg": [os.getloadavg()]}
    fashion_root = args.fashion_root.resolve() if args.large_jobs > 0 else None
    if fashion_root is not None and not (fashion_root / "FashionMNIST" / "raw").is_dir():
        raise SystemExit(
            f"no Fashion-MNIST under {fashion_root}: scripts/fashion_mnist.sh var/data"
        )
    fashion = None
    if fashion_root is not None:
        t = time.perf_counter()
        fashion = train_fashion(fashion_root, args.torch_threads)
        report["train_s"] = time.perf_counter() - t
        print(f"Fashion-MNIST model trained in {report['train_s']:.0f} s", flush=True)
    large_params = {"repair_epochs": args.large_repair_epochs, "max_extra_repair_epochs": 0}
    plan = [("small", CHEAP_PARAMS)] * args.small_jobs + [
        ("large", {**CHEAP_PARAMS_LARGE, **large_params})
    ] * args.large_jobs
    with backend_env(args, workdir) as env:
        roots = [str(workdir)] + ([str(fashion_root)] if fashion_root else [])
        env["NEPENTHE_DATA_ROOTS"] = json.dumps(roots)
        env["NEPENTHE_WORKER_CACHE_BYTES"] = cache_bytes(args, args.cache[0])
        service = Service(env, workdir / f"logs-{args.cache[0]}", 1)
        with service:
            service.wait_workers_ready()
            report["server"] = server_versions(env)
            api = NepentheClient(service.url, service.admin_key)
            datasets = register_datasets(api, fashion_root)
            for i, mode in enumerate(args.cache):
                if i:
                    setting = {"NEPENTHE_WORKER_CACHE_BYTES": cache_bytes(args, mode)}
                    restart_worker(service, setting, workdir / f"logs-{mode}")
                versions = register_models(api, workdir, i, fashion)
                jobs: list[dict[str, Any]] = []
                for n, (size, params) in enumerate(plan):
                    started = time.perf_counter()
                    forget = n if size == "small" else n - args.small_jobs
                    done = run_job(api, versions[size], datasets[size], params, forget)
                    parts = breakdown(done["job"], done["events"])
                    versions[size] = done["job"]["output_version"]["id"]
                    jobs.append({"size": size, "n": n, "parts": parts})
                    print(
                        f"cache {mode:3s} {size:5s} job {n}: total {parts['total']:6.2f} s, "
                        f"method {parts['method']:6.2f} s, overhead {parts['overhead']:5.2f} s "
                        f"(hand-over {parts['handover']:.2f}, load {parts['load']:.2f}, "
                        f"record {parts['record']:.2f}; dataset {parts['cache_dataset']}) "
                        f"[{time.perf_counter() - started:.0f} s wall]",
                        flush=True,
                    )
                report["runs"][mode] = jobs
            api.close()
        report["signing_ms"] = signing_ms(workdir)
    report["load_avg"].append(os.getloadavg())
    return report


def cache_bytes(args: argparse.Namespace, mode: str) -> str:
    return "0" if mode == "off" else str(args.cache_bytes)


# The large job: UNSIR's official defaults (1,000 retain images per class, 40 noise steps of 256
# noise images...), the repair epochs from --large-repair-epochs.
CHEAP_PARAMS_LARGE: dict[str, Any] = {"seed": 0}


def signing_ms(workdir: Path) -> float:
    """One certificate-sized signature (the record's only cryptography), timed apart: a
    document of a job's metrics' size, median of 20."""
    from app.signing import load_signer

    signer = load_signer(workdir / "signing-key.pem")
    doc = {"metrics": {"padding": "x" * 20_000, "n": list(range(500))}}
    times = []
    for _ in range(20):
        t = time.perf_counter()
        signer.sign(doc)
        times.append((time.perf_counter() - t) * 1000)
    return median(times)


# --------------------------------------------------------------------------------------------
# Reporting


def rows(report: dict[str, Any]) -> list[str]:
    head = "| cache | job | dataset | total (s) | " + " | ".join(p for _, p in PARTS)
    head += " | other | overhead (s) | overhead / method |"
    lines = [head, "|" + "---|" * (len(PARTS) + 7)]
    for mode, jobs in report["runs"].items():
        for job in jobs:
            p = job["parts"]
            label = f"{job['size']} #{job['n'] + 1}"
            cells = [f"{p[k]:.3f}" if p[k] < 10 else f"{p[k]:.1f}" for k, _ in PARTS]
            ratio = p["overhead"] / p["method"] if p["method"] else float("nan")
            lines.append(
                f"| {mode} | {label} | {p['cache_dataset']} | {p['total']:.2f} | "
                + " | ".join(cells)
                + f" | {p['between']:.3f} | {p['overhead']:.2f} | **{ratio:.1%}** |"
            )
    return lines


def load_rows(report: dict[str, Any]) -> list[str]:
    lines = [
        "| cache | job | network | weights | dataset | evaluation sets | progress writes |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, jobs in report["runs"].items():
        for job in jobs:
            p = job["parts"]
            lines.append(
                f"| {mode} | {job['size']} #{job['n'] + 1} | {p['load_architecture']:.3f} | "
                f"{p['load_weights']:.3f} | {p['load_dataset']:.3f} ({p['cache_dataset']}) | "
                f"{p['load_eval_sets']:.3f} | {int(p['progress_writes'])} in "
                f"{p['progress_write_s']:.3f} |"
            )
    return lines


def summary(report: dict[str, Any]) -> list[str]:
    out = []
    for mode, jobs in report["runs"].items():
        for size in ("small", "large"):
            warm = [j["parts"] for j in jobs if j["size"] == size][1:]
            if not warm:
                continue
            over = median(p["overhead"] for p in warm)
            meth = median(p["method"] for p in warm)
            out.append(
                f"cache {mode}, {size} jobs after the first ({len(warm)}): median overhead "
                f"{over:.2f} s over a median method of {meth:.2f} s ({over / meth:.1%})"
            )
    return out


def subsection(args: argparse.Namespace, report: dict[str, Any], command: str) -> str:
    train = report.get("train_s")
    out = [
        f"### {title(args.backend)}",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- *Setup*: one worker process ({args.torch_threads} torch thread"
        f"{'s' if args.torch_threads > 1 else ''}), one uvicorn API process, the client polling "
        f"every 0.3 s; {report['server']}; small jobs: UNSIR `{json.dumps(CHEAP_PARAMS)}` on "
        f"digits; large jobs: UNSIR with the official defaults and "
        f"`repair_epochs` {args.large_repair_epochs} on Fashion-MNIST (`tiny_cnn` width 16"
        + (f", trained one epoch here in {train:.0f} s" if train else "")
        + f"); acceptance checks off; worker cache {args.cache_bytes // 1024**2} MiB when on.",
        f"- *Machine*: {os.cpu_count()}-core CPU ({cpu_name()}, `nproc` {os.cpu_count()}), the "
        f"development machine; Python {platform.python_version()}; code at {revision()}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Load average (1/5/15 min) "
        + " before and ".join("/".join(f"{x:.1f}" for x in a) for a in report["load_avg"])
        + " after.",
        "",
        "Seconds from `job.queued` to `job.succeeded`, by part (*other*: what no part times, "
        "e.g. starting the heartbeat; *recipe rest*: weight distances, the cost summary, the "
        "last progress write):",
        "",
        *rows(report),
        "",
        "The recipe's load, by part (seconds; progress writes are inside the phases above):",
        "",
        *load_rows(report),
        "",
        f"One Ed25519 signature of a certificate-sized document, timed apart: "
        f"{report['signing_ms']:.2f} ms.",
        "",
    ]
    for line in summary(report):
        out += [f"- {line}."]
    return "\n".join(wrap(line) for line in out) + "\n"


INTRO = """\
`bench/job_overhead.py` runs jobs through the real service (uvicorn API and one Celery worker
process, as `bench/load.py` starts them) one after another on one model's lineage, and splits the
time from the audit event `job.queued` to `job.succeeded` into what the worker records in
`metrics.timings` (the task's start, the claim, reading the job, fetching the weights, the recipe,
storing the checkpoint, the start of the record transaction) and `metrics.phase_seconds` /
`metrics.load_seconds` (the recipe's phases). *Hand-over* runs from `job.queued` (stamped as the
submit commits) to the worker's task starting: the API's send after commit, the broker, the
worker's dispatch. *Record* runs from the start of the outcome's transaction to `job.succeeded`
being stamped as it commits: the version, the signed certificate, the supersession marks and the
last transition with its audit events. *Overhead* is everything but the method. Each run's first
job is its worker process's first; *cache off* is `NEPENTHE_WORKER_CACHE_BYTES=0` (the worker as
it was before its cache), *cache on* the default.
"""


def write_docs(sub: str, backend: str) -> None:
    """Replace this backend's subsection of the section (the section is appended when new)."""
    titles = {name: title(name) for name in BACKENDS}
    write_backend_section(DOCS, SECTION, INTRO, sub, backend, titles)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="production")
    parser.add_argument("--small-jobs", type=int, default=4, help="digits jobs per run")
    parser.add_argument("--large-jobs", type=int, default=2, help="Fashion-MNIST jobs per run")
    parser.add_argument(
        "--large-repair-epochs", type=int, default=5, help="UNSIR repair epochs of a large job"
    )
    parser.add_argument(
        "--cache", default="off,on", help="runs, comma-separated: off (no worker cache), on"
    )
    parser.add_argument("--cache-bytes", type=int, default=1024**3, help="the cache's bound")
    parser.add_argument("--fashion-root", type=Path, default=ROOT / "var" / "data")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--admin-url", default=PG_ADMIN, help="a database to CREATE DATABASE from")
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL database")
    parser.add_argument("--write-docs", action="store_true", help=f"write {SECTION!r}")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()
    args.cache = [c.strip() for c in args.cache.split(",") if c.strip()]
    if not set(args.cache) <= {"off", "on"} or not args.cache:
        raise SystemExit("--cache takes off, on or off,on")
    args.fresh_signing_key = False  # backend_env: provision the key, as production does
    command = " ".join(
        [".venv/bin/python", "bench/job_overhead.py", *documented(sys.argv[1:], ("--write-docs",))]
    )
    with tempfile.TemporaryDirectory(prefix="nepenthe-overhead-") as tmp:
        report = run(args, Path(tmp))
    print()
    for line in [*rows(report), "", *load_rows(report), "", *summary(report)]:
        print(line)
    if args.write_docs:
        write_docs(subsection(args, report, command), args.backend)
        print(f"wrote {SECTION!r} ({args.backend}) in {DOCS.relative_to(ROOT)}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
