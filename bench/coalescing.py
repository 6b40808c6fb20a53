"""Coalesced deletions against one by one: what N requests cost as one joint job.

    .venv/bin/python bench/coalescing.py --write-docs          # N = 1, 10, 100 and 2 classes
    .venv/bin/python bench/coalescing.py --samples 1,10        # fewer rows

For each scenario (N sample requests of 10 distinct digits training images each; 2 class
requests of one class each) it runs the service's own code in this process on the embedded
backend (SQLite in a temporary folder; the API through Starlette's test client, the worker's task
called directly, so no broker hand-over is counted) twice, from the same registered weights:

- *one by one*: the model does not coalesce; each request is submitted on the version the
  previous one produced, as today, and its job runs to the end before the next is submitted;
- *coalesced*: the model coalesces (``max_wait_s`` of an hour); all N are submitted on the first
  version, the first one's wait is then declared over (as if the hour had passed) and its worker
  runs the joint job.

Both use the service's defaults (SalUn for samples, ``auto`` for classes, the default acceptance
gate). It reports the jobs and versions made, the time from the first submission to the last job's
end (without the coalesced requests' deliberate wait), the workers' seconds in all and in the
methods, and the quality of the last version: its accuracy on the union of the forgotten data
(for samples, the forgotten training images; for classes, the classes' held-out images) and on
the held-out images of the rest, next to a model retrained here without the union (the same
recipe as the registered one: tiny_cnn, 15 epochs, Adam 3e-3, batch 64, seed 0). ``--write-docs``
replaces the section in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from job_overhead import NOT_METHOD  # noqa: E402 - bench/, on the path as the script's folder
from report import cpu_name, documented, section_text, write_section  # noqa: E402

from unlearning import architectures, data  # noqa: E402
from unlearning.evaluate import count_correct  # noqa: E402
from unlearning.train import train_classifier  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Coalescing: N requests as one job or one by one (issue 19, item 1)"
SPEC = data.InputSpec((1, 8, 8), (0.5,), (0.5,))
ARCH = {"name": "tiny_cnn", "args": {"in_channels": 1}}
CLASSES = [3, 7]
PER_REQUEST = 10


def trained(train: data.ImageSource, keep: np.ndarray) -> dict[str, torch.Tensor]:
    """tiny_cnn trained on ``keep`` of the digits training split (the registered recipe)."""
    torch.manual_seed(0)
    model = architectures.build_classifier("tiny_cnn", 10, {"in_channels": 1})
    train_classifier(model, train, keep, SPEC, epochs=15, lr=3e-3, batch_size=64)
    return {k: v.clone() for k, v in model.state_dict().items()}


def accuracy(state: dict[str, torch.Tensor], source: data.ImageSource, idx: np.ndarray) -> float:
    model = architectures.build_classifier("tiny_cnn", 10, {"in_channels": 1})
    model.load_state_dict(state)
    counts = count_correct(model, source, idx, SPEC, 10, torch.device("cpu"))
    return float(counts.correct.sum() / counts.total.sum())


class Service:
    """The API in this process on a fresh embedded backend, and the worker's task."""

    def __init__(self, folder: Path) -> None:
        from client.databases import migrate, reset_caches

        os.environ.update(
            {
                "NEPENTHE_DATABASE_URL": f"sqlite:///{folder / 'nepenthe.db'}",
                "NEPENTHE_BROKER_URL": "filesystem://",
                "NEPENTHE_BROKER_DIR": str(folder / "broker"),
                "NEPENTHE_STORE_DIR": str(folder / "store"),
                "NEPENTHE_SIGNING_KEY_FILE": str(folder / "signing-key.pem"),
                "NEPENTHE_DEVICE": "cpu",
            }
        )
        migrate(os.environ["NEPENTHE_DATABASE_URL"])
        reset_caches()
        from fastapi.testclient import TestClient

        from app.actors import Scope
        from app.cli import create_key
        from app.main import create_app

        self.client = TestClient(create_app())
        self.client.__enter__()
        key = create_key("bench", "bench-admin", [Scope.admin], create_org=True)
        self.client.headers["Authorization"] = f"Bearer {key}"

    def close(self) -> None:
        from client.databases import reset_caches

        self.client.__exit__(None, None, None)
        reset_caches()

    def call(self, method: str, url: str, **kwargs: Any) -> Any:
        response = self.client.request(method, url, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {url}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    def register(self, state: dict[str, torch.Tensor], coalesce: bool) -> tuple[str, str, str]:
        coalescing = {"max_wait_s": 3600, "max_requests": 1000} if coalesce else None
        return self.register_with(state, {"coalescing": coalescing})

    def register_with(
        self, state: dict[str, torch.Tensor], extra: dict[str, Any]
    ) -> tuple[str, str, str]:
        """The model (with ``extra`` fields), its weights and the digits: their ids."""
        body = {
            "name": "digits-cnn",
            "architecture": ARCH,
            "input_shape": [1, 8, 8],
            "normalization": {"mean": [0.5], "std": [0.5]},
            "class_names": [str(i) for i in range(10)],
            **extra,
        }
        model = self.call("POST", "/v1/models", json=body)
        weights = safetensors.torch.save(state)
        files = {"file": ("m.safetensors", weights, "application/octet-stream")}
        version = self.call("POST", f"/v1/models/{model['id']}/versions", files=files)
        digits = {"name": "digits", "kind": "sklearn_digits"}
        dataset = self.call("POST", "/v1/datasets", json=digits)
        return model["id"], version["id"], dataset["id"]

    def submit(self, version_id: str, dataset_id: str, forget: dict[str, Any]) -> dict[str, Any]:
        body = {"model_version_id": version_id, "dataset_id": dataset_id, **forget}
        return dict(self.call("POST", "/v1/deletion-requests", json=body))

    def run(self, job_id: str) -> dict[str, Any]:
        from workers.tasks import run_job

        run_job(job_id)
        return dict(self.call("GET", f"/v1/jobs/{job_id}"))

    def weights(self, version_id: str) -> dict[str, torch.Tensor]:
        """The version's weights, read from the store (a download of a version a later
        deletion superseded would need an admin's reason)."""
        from app.db import session_scope
        from app.orm import ModelVersion
        from app.storage import get_store
        from unlearning.checkpoints import load_file

        with session_scope() as session:
            version = session.get(ModelVersion, version_id)
            assert version is not None
            key = version.storage_key
        return load_file(get_store().local_path(key))


def time_has_come(job_id: str) -> None:
    """The job's wait is over, as if its ``max_wait_s`` had passed."""
    from sqlalchemy import update

    from app.db import session_scope
    from app.orm import Job

    past = datetime.now(UTC) - timedelta(seconds=60)
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(not_before=past))


def run_scenario(
    forgets: list[dict[str, Any]], coalesce: bool, state: dict[str, torch.Tensor], folder: Path
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    service = Service(folder)
    try:
        _, version_id, dataset_id = service.register(state, coalesce)
        start = time.perf_counter()
        jobs: list[dict[str, Any]] = []
        if coalesce:
            submitted = [service.submit(version_id, dataset_id, f) for f in forgets]
            time_has_come(submitted[0]["job"]["id"])
            service.run(submitted[0]["job"]["id"])
            jobs = [service.call("GET", f"/v1/jobs/{r['job']['id']}") for r in submitted]
            last_version = jobs[0]["output_version"]["id"] if jobs[0]["output_version"] else None
        else:
            last_version = version_id
            for forget in forgets:
                request = service.submit(last_version, dataset_id, forget)
                job = service.run(request["job"]["id"])
                jobs.append(job)
                if job["output_version"]:
                    last_version = job["output_version"]["id"]
        wall = time.perf_counter() - start
        ran = {j["joint_job_id"] or j["id"]: j for j in jobs}  # one entry per run
        figures = {
            "requests": len(forgets),
            "runs": len(ran),
            "statuses": _count(j["status"] for j in jobs),
            "versions": len({j["output_version"]["id"] for j in jobs if j["output_version"]}),
            "wall_s": wall,
            "worker_s": sum(j["metrics"]["total_seconds"] for j in ran.values() if j["metrics"]),
            "method_s": sum(_method_seconds(j) for j in ran.values()),
        }
        final = service.weights(last_version or version_id)
    finally:
        service.close()
    return figures, final


def _method_seconds(job: dict[str, Any]) -> float:
    phases = (job["metrics"] or {}).get("phase_seconds", {})
    return float(sum(v for k, v in phases.items() if k not in NOT_METHOD))


def _count(statuses: Any) -> dict[str, int]:
    counted: dict[str, int] = {}
    for s in statuses:
        counted[s] = counted.get(s, 0) + 1
    return counted


def scenarios(sample_counts: list[int], seed: int) -> list[tuple[str, list[dict[str, Any]]]]:
    train = data.open_split("sklearn_digits", None, "train")
    rng = np.random.default_rng(seed)
    out = []
    for n in sample_counts:
        chosen = rng.choice(len(train), size=n * PER_REQUEST, replace=False)
        ids = [train.ids[i] for i in chosen]
        requests = [
            {"forget_samples": ids[k * PER_REQUEST : (k + 1) * PER_REQUEST]} for k in range(n)
        ]
        out.append((f"{n} sample request{'s' * (n != 1)} of {PER_REQUEST}", requests))
    out.append((f"{len(CLASSES)} class requests", [{"forget_classes": [c]} for c in CLASSES]))
    return out


def evaluation_sets(
    forgets: list[dict[str, Any]],
) -> tuple[np.ndarray, np.ndarray, data.ImageSource, data.ImageSource]:
    """The union's evaluation images and the held-out rest: (forget idx, rest idx, sources)."""
    train = data.open_split("sklearn_digits", None, "train")
    test = data.open_split("sklearn_digits", None, "test")
    if "forget_classes" in forgets[0]:
        classes = {c for f in forgets for c in f["forget_classes"]}
        in_union = np.isin(np.asarray(test.targets), list(classes))
        return np.flatnonzero(in_union), np.flatnonzero(~in_union), test, test
    position = {sid: i for i, sid in enumerate(train.ids)}
    union = np.array(sorted(position[s] for f in forgets for s in f["forget_samples"]))
    return union, np.arange(len(test)), train, test


def retrained_without(forgets: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    train = data.open_split("sklearn_digits", None, "train")
    keep = np.ones(len(train), dtype=bool)
    if "forget_classes" in forgets[0]:
        classes = [c for f in forgets for c in f["forget_classes"]]
        keep &= ~np.isin(np.asarray(train.targets), classes)
    else:
        gone = {s for f in forgets for s in f["forget_samples"]}
        keep &= np.array([sid not in gone for sid in train.ids])
    return trained(train, np.flatnonzero(keep))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", default="1,10,100", help="sample request counts")
    parser.add_argument("--seed", type=int, default=0, help="which training images are named")
    parser.add_argument("--write-docs", action="store_true", help=f"write {SECTION!r}")
    args = parser.parse_args()
    command = " ".join(
        [".venv/bin/python", "bench/coalescing.py", *documented(sys.argv[1:], ("--write-docs",))]
    )
    train = data.open_split("sklearn_digits", None, "train")
    original = trained(train, np.arange(len(train)))
    rows = []
    for name, forgets in scenarios([int(n) for n in args.samples.split(",") if n], args.seed):
        forget_idx, rest_idx, forget_src, rest_src = evaluation_sets(forgets)
        reference = retrained_without(forgets)
        row: dict[str, Any] = {
            "scenario": name,
            "original": (
                accuracy(original, forget_src, forget_idx),
                accuracy(original, rest_src, rest_idx),
            ),
            "retrain": (
                accuracy(reference, forget_src, forget_idx),
                accuracy(reference, rest_src, rest_idx),
            ),
        }
        for mode, coalesce in (("one by one", False), ("coalesced", True)):
            with tempfile.TemporaryDirectory(prefix="nepenthe-coalesce-") as tmp:
                figures, final = run_scenario(forgets, coalesce, original, Path(tmp))
            figures["forget_acc"] = accuracy(final, forget_src, forget_idx)
            figures["rest_acc"] = accuracy(final, rest_src, rest_idx)
            row[mode] = figures
            print(f"{name}, {mode}: {figures}", flush=True)
        rows.append(row)
    lines = table(rows)
    print("\n".join(lines))
    if args.write_docs:
        write_section(DOCS, SECTION, section(lines, command))
        print(f"wrote {SECTION!r} in {DOCS.relative_to(ROOT)}")


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| scenario | mode | runs | versions | job outcomes | first submission → last end (s) "
        "| worker (s) | of which methods (s) | forgotten data: accuracy (retrain, original) "
        "| held-out rest: accuracy (retrain, original) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        (of, orest), (rf, rrest) = row["original"], row["retrain"]
        for mode in ("one by one", "coalesced"):
            f = row[mode]
            outcomes = ", ".join(f"{n} {s}" for s, n in sorted(f["statuses"].items()))
            lines.append(
                f"| {row['scenario']} | {mode} | {f['runs']} | {f['versions']} | {outcomes} "
                f"| {f['wall_s']:.1f} | {f['worker_s']:.1f} | {f['method_s']:.1f} "
                f"| **{pct(f['forget_acc'])}** ({pct(rf)}, {pct(of)}) "
                f"| **{pct(f['rest_acc'])}** ({pct(rrest)}, {pct(orest)}) |"
            )
    return lines


def section(lines: list[str], command: str) -> str:
    machine = (
        f"{cpu_name()}, `nproc` {os.cpu_count()}, Python {platform.python_version()}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} torch threads"
    )
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    intro = (
        "`bench/coalescing.py` runs N deletion requests against one registered digits "
        "`tiny_cnn` (scikit-learn digits, 8x8) with the service's code in one process on the "
        "embedded backend, twice: one by one (each request on the version the previous one "
        "produced, each job to its end before the next submission) and coalesced (all N on "
        "the first version, the first one's wait declared over, one joint job). The service's "
        "defaults throughout: SalUn for samples, `auto` for classes, the default acceptance "
        "gate. *First submission → last end* leaves out the coalesced requests' deliberate "
        "wait (up to the model's `max_wait_s`); *worker* is the jobs' own seconds (load, "
        "measurements, method, save), once per run; the accuracies are of the last version, "
        "next to a model retrained here without the union and the original."
    )
    return section_text(SECTION, intro, command, f"{machine}; {when}", lines)


if __name__ == "__main__":
    main()
