"""Drift over a model's lifetime: 50 sample deletions and 3 class deletions on one model.

    .venv/bin/python bench/drift.py --write-docs

One registered digits ``tiny_cnn`` (scikit-learn digits, 8x8; ``bench/coalescing.py``'s model,
service and retrain recipe) receives 50 sample deletion requests of 10 distinct training images
each, then 3 class deletion requests (classes 3, 5 and 8), in three lifetimes, each from the same
registered weights on a fresh embedded backend:

- *one by one*: every request its own job, on the version the previous one produced;
- *coalesced*: the model coalesces; the sample requests arrive in 5 batches of 10 (each batch
  waits together and runs as one joint job), the 3 class requests together (one joint job);
- *one by one, budget*: as the first, with a drift budget of ``max_deletions`` 20 and ``retrain``:
  the service retrains from the training record (15 epochs, Adam 3e-3, batch 64) whenever a
  deletion would be the 21st since the last base.

After each version it reads the version's drift record (deletions since its base, summed
retain-accuracy change, weight distance to the base) and measures here the version's accuracy on
the held-out images of the classes not forgotten so far, and on the images forgotten so far. At the
end it compares the last version with a model retrained here without everything forgotten.
Defaults of the service throughout (SalUn for samples, ``auto`` for classes, the default gate).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coalescing import (  # noqa: E402 - bench/, on the path as the script's folder
    PER_REQUEST,
    Service,
    accuracy,
    time_has_come,
    trained,
)
from report import cpu_name, documented, section_text, write_section  # noqa: E402

from unlearning import data  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Drift over a model's lifetime: 50 sample and 3 class deletions (issue 19, item 2)"
SAMPLE_REQUESTS = 50
CLASSES = [3, 5, 8]
BATCH = 10
TRAINING = {"epochs": 15, "optimizer": "adam", "lr": 0.003, "batch_size": 64}
BUDGET = {"max_deletions": 20, "retrain": True}


class Lifetime:
    """One model's lifetime on a fresh backend: submits, runs, and measures each version."""

    def __init__(self, service: Service, state: dict[str, torch.Tensor], mode: str) -> None:
        self.service = service
        self.mode = mode
        extra = {"training": TRAINING}
        if mode == "coalesced":
            extra["coalescing"] = {"max_wait_s": 3600, "max_requests": 1000}
        if mode == "budget":
            extra["drift_budget"] = BUDGET
        self.model_id, self.version_id, self.dataset_id = service.register_with(state, extra)
        self.forgotten_samples: list[str] = []
        self.forgotten_classes: list[int] = []
        self.steps: list[dict[str, Any]] = []

    def serve(self, batch: list[dict[str, Any]]) -> None:
        """Submit ``batch`` on the current version and run it (one job, or one each)."""
        if self.mode == "coalesced":
            submitted = [self.service.submit(self.version_id, self.dataset_id, f) for f in batch]
            time_has_come(submitted[0]["job"]["id"])
            self.service.run(submitted[0]["job"]["id"])
            self._after(self.service.call("GET", f"/v1/jobs/{submitted[0]['job']['id']}"), batch)
            return
        for forget in batch:
            request = self.service.submit(self.version_id, self.dataset_id, forget)
            self._after(self.service.run(request["job"]["id"]), [forget])

    def served(self) -> int:
        """Requests served so far."""
        return len(self.forgotten_samples) // PER_REQUEST + len(self.forgotten_classes)

    def _after(self, job: dict[str, Any], served: list[dict[str, Any]]) -> None:
        for forget in served:
            self.forgotten_samples += forget.get("forget_samples", [])
            self.forgotten_classes += forget.get("forget_classes", [])
        if job["output_version"]:
            self.version_id = job["output_version"]["id"]
        drift = (job["metrics"] or {}).get("drift") or {}
        self.steps.append(
            {
                "requests": len(self.forgotten_samples) // PER_REQUEST
                + len(self.forgotten_classes),
                "status": job["status"],
                "method": (job["metrics"] or {}).get("method"),
                "drift": drift,
                "version_id": self.version_id,
            }
        )


def held_out_rest(classes: list[int]) -> np.ndarray:
    test = data.open_split("sklearn_digits", None, "test")
    return np.flatnonzero(~np.isin(np.asarray(test.targets), classes))


def measure(
    state: dict[str, torch.Tensor], samples: list[str], classes: list[int]
) -> dict[str, float | None]:
    """Held-out accuracy on the classes kept, and accuracy on what was forgotten (the samples'
    own images; the classes' held-out images)."""
    train = data.open_split("sklearn_digits", None, "train")
    test = data.open_split("sklearn_digits", None, "test")
    position = {sid: i for i, sid in enumerate(train.ids)}
    kept = [position[s] for s in samples if train.targets[position[s]] not in classes]
    figures: dict[str, float | None] = {
        "held_out_rest": accuracy(state, test, held_out_rest(classes)),
        "forgotten_samples": accuracy(state, train, np.array(kept)) if kept else None,
        "forgotten_classes": None,
    }
    if classes:
        gone = np.flatnonzero(np.isin(np.asarray(test.targets), classes))
        figures["forgotten_classes"] = accuracy(state, test, gone)
    return figures


def requests(seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    train = data.open_split("sklearn_digits", None, "train")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(train), size=SAMPLE_REQUESTS * PER_REQUEST, replace=False)
    ids = [train.ids[i] for i in chosen]
    samples = [
        {"forget_samples": ids[k * PER_REQUEST : (k + 1) * PER_REQUEST]}
        for k in range(SAMPLE_REQUESTS)
    ]
    return samples, [{"forget_classes": [c]} for c in CLASSES]


def run_lifetime(
    mode: str, state: dict[str, torch.Tensor], seed: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    samples, classes = requests(seed)
    with tempfile.TemporaryDirectory(prefix="nepenthe-drift-") as tmp:
        service = Service(Path(tmp))
        try:
            life = Lifetime(service, state, mode)
            start = time.perf_counter()
            for k in range(0, len(samples), BATCH):
                life.serve(samples[k : k + BATCH])
            life.serve(classes)
            wall = time.perf_counter() - start
            for step in life.steps:
                weights = service.weights(step["version_id"])
                done = step["requests"]
                served_samples = [
                    s for f in samples[: min(done, SAMPLE_REQUESTS)] for s in f["forget_samples"]
                ]
                served_classes = CLASSES[: max(0, done - SAMPLE_REQUESTS)]
                step["measured"] = measure(weights, served_samples, served_classes)
        finally:
            service.close()
    return life.steps, {"wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-docs", action="store_true", help=f"write {SECTION!r}")
    args = parser.parse_args()
    command = " ".join(
        [".venv/bin/python", "bench/drift.py", *documented(sys.argv[1:], ("--write-docs",))]
    )
    train = data.open_split("sklearn_digits", None, "train")
    original = trained(train, np.arange(len(train)))
    samples, _ = requests(args.seed)
    every_sample = [s for f in samples for s in f["forget_samples"]]
    keep = ~np.isin(np.asarray(train.targets), CLASSES)
    keep &= np.array([sid not in set(every_sample) for sid in train.ids])
    reference = trained(train, np.flatnonzero(keep))
    ends = {
        "original": measure(original, every_sample, CLASSES),
        "retrain": measure(reference, every_sample, CLASSES),
    }
    lives = {}
    for mode in ("one by one", "coalesced", "budget"):
        steps, totals = run_lifetime(mode, original, args.seed)
        lives[mode] = (steps, totals)
        print(f"{mode}: {len(steps)} steps in {totals['wall_s']:.1f} s", flush=True)
    lines = tables(lives, ends)
    print("\n".join(lines))
    if args.write_docs:
        write_section(DOCS, SECTION, section(lines, command))
        print(f"wrote {SECTION!r} in {DOCS.relative_to(ROOT)}")


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def num(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def tables(lives: dict[str, Any], ends: dict[str, Any]) -> list[str]:
    lines = [
        "| lifetime | after request | job | method | deletions since base | summed retain-accuracy "
        "change | weight distance to base | held-out, classes kept | forgotten samples | "
        "forgotten classes (held-out) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, (steps, _) in lives.items():
        shown = [
            s
            for i, s in enumerate(steps)
            if mode == "coalesced"
            or s["requests"] % 10 == 0
            or s["requests"] > SAMPLE_REQUESTS
            or s["method"] == "retrain"
            or i == 0
        ]
        for s in shown:
            d, m = s["drift"], s["measured"]
            lines.append(
                f"| {mode} | {s['requests']} | {s['status']} | {s['method']} "
                f"| {d.get('deletions', '-')} | {num(d.get('retain_accuracy_change'), '+.3f')} "
                f"| {num(d.get('weight_distance'))} | {pct(m['held_out_rest'])} "
                f"| {pct(m['forgotten_samples'])} | {pct(m['forgotten_classes'])} |"
            )
    for name, m in ends.items():
        lines.append(
            f"| {name} (reference) | - | - | - | - | - | - | {pct(m['held_out_rest'])} "
            f"| {pct(m['forgotten_samples'])} | {pct(m['forgotten_classes'])} |"
        )
    lines += ["", "| lifetime | jobs | versions | retrains | time (s) |", "|---|---|---|---|---|"]
    for mode, (steps, totals) in lives.items():
        versions = len({s["version_id"] for s in steps})
        retrains = sum(s["method"] == "retrain" for s in steps)
        lines.append(
            f"| {mode} | {len(steps)} | {versions} | {retrains} | {totals['wall_s']:.1f} |"
        )
    return lines


def section(lines: list[str], command: str) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} torch threads"
    intro = (
        "`bench/drift.py` gives one digits `tiny_cnn` 50 sample deletion requests of 10 "
        "training images each and then 3 class deletions (3, 5, 8), in three lifetimes from "
        "the same weights: one by one; coalesced (5 batches of 10 sample requests, then the "
        "3 class requests, each batch one joint job); and one by one under a drift budget of "
        "20 deletions with retrain (from the training record: 15 epochs, Adam 3e-3, batch "
        "64). Per version: its drift record (deletions since its base, summed held-out "
        "retain-accuracy change, weight distance to the base) and accuracies measured here "
        "on the held-out images of the classes kept so far and on what was forgotten so far. "
        "The table shows every tenth request, the class deletions and the retrains; the last "
        "rows are the original and a model retrained here without everything forgotten."
    )
    return section_text(SECTION, intro, command, f"{machine}; {when}", lines)


if __name__ == "__main__":
    main()
