"""UNSIR against retraining and the reference methods, in one process on the same hardware.

    python bench/compare_methods.py --dataset digits                    # under a minute on CPU
    python bench/compare_methods.py --dataset fashion --root var/data   # ResNet-18-class, long

It trains the original model, then for each forget set (one class, then two classes) runs every
method on a copy of it and measures the result with the same code the workers use
(``unlearning.verify``): forget / retain / test accuracy, the entropy MIA and MIA-Efficacy on the
forget set, wall time and samples processed. Retraining uses the original's recipe and is
measured every quarter epoch, which gives the time it needs to reach UNSIR's retain accuracy.
Prints markdown tables and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from report import device_name, sync  # bench/, on the path as the script's folder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unlearning import architectures, data, verify
from unlearning.methods import METHODS, UnlearningTask
from unlearning.train import train_classifier

SETUPS: dict[str, dict[str, Any]] = {
    "digits": {
        "kind": "sklearn_digits",
        "arch": "tiny_cnn",
        "args": {"in_channels": 1},
        "spec": data.InputSpec((1, 8, 8), (0.5,), (0.5,)),
        "train": {"epochs": 15, "lr": 3e-3, "batch_size": 64},
        "forget": [[3], [3, 8]],
        # 1,400 training images: one 256-image repair epoch is ~5 steps, too few to heal.
        "params": {"unsir": {"repair_epochs": 3, "repair_batch_size": 32}},
    },
    "fashion": {
        "kind": "fashion_mnist",
        "arch": "small_resnet",
        "args": {"in_channels": 1, "width": 16, "blocks": [2, 2, 2, 2]},
        "spec": data.InputSpec((1, 28, 28), (0.2860,), (0.3530,)),
        "train": {"epochs": 3, "lr": 1e-3, "batch_size": 128},
        "forget": [[0], [0, 6]],
        "params": {},
    },
}
ORDER = ("unsir", "retrain", "finetune", "neggrad_plus", "random_label", "salun")


class RetrainCurve:
    """Retain-test accuracy of the model being retrained, every quarter epoch, with the training
    time spent so far (the measuring itself is not counted)."""

    def __init__(
        self, sets: verify.EvalSets, spec: data.InputSpec, device: torch.device, epochs: int
    ) -> None:
        self.sets, self.spec, self.device = sets, spec, device
        self.marks = [k / (4 * epochs) for k in range(1, 4 * epochs + 1)]
        self.points: list[tuple[float, float]] = []
        self.model: torch.nn.Module | None = None
        self.start = time.perf_counter()
        self.excluded = 0.0

    def build(self, fresh: torch.nn.Module) -> torch.nn.Module:
        self.model, self.start, self.excluded = fresh, time.perf_counter(), 0.0
        return fresh

    def __call__(self, _phase: str, fraction: float) -> None:
        if not self.marks or fraction < self.marks[0] - 1e-9 or self.model is None:
            return
        while self.marks and fraction >= self.marks[0] - 1e-9:
            self.marks.pop(0)
        sync(self.device)
        paused = time.perf_counter()
        out = verify.model_outputs(
            self.model, self.sets.test, self.sets.retain_test, self.spec, self.device
        )
        self.model.train()
        self.points.append((paused - self.start - self.excluded, verify.accuracy(out) or 0.0))
        self.excluded += time.perf_counter() - paused


def run_method(
    label: str,
    original: torch.nn.Module,
    setup: dict[str, Any],
    task_args: dict[str, Any],
    sets: verify.EvalSets,
    device: torch.device,
) -> dict[str, Any]:
    # "label=method" runs a method under another name, with the label's own parameters.
    label, _, name = label.partition("=") if "=" in label else (label, "", label)
    model = copy.deepcopy(original)
    curve = None
    params = dict(setup["params"].get(label, {}))
    if name == "retrain":
        params = {**setup["train"], **params}
        curve = RetrainCurve(sets, setup["spec"], device, params["epochs"])

    def build() -> torch.nn.Module:
        return architectures.build_classifier(setup["arch"], len(sets.class_names), setup["args"])

    task = UnlearningTask(
        model,
        **task_args,
        device=device,
        progress=curve or (lambda *_: None),
        fresh_model=(lambda: curve.build(build())) if curve else build,
    )
    method = METHODS[name]
    config = method.config_type(**params)
    sync(device)
    start = time.perf_counter()
    result = method.run(task, config)
    sync(device)
    seconds = time.perf_counter() - start - (curve.excluded if curve else 0.0)
    measured = verify.measure(model, sets, setup["spec"], device)
    return {
        "method": label,
        "params": config.__dict__,
        "seconds": seconds,
        "samples_processed": sum(result.samples_processed.values()),
        "forget_train": measured["accuracy"]["forget_train"],
        "forget_test": measured["accuracy"]["forget_test"],
        "retain_test": measured["accuracy"]["retain_test"],
        "test": measured["accuracy"]["test"],
        "entropy_mia": measured["mia"]["entropy"]["forget_member_rate"],
        "mia_efficacy": measured["mia"]["efficacy"],
        "forget_confusion": measured["forget_confusion"],
        "feature_probe": (measured["feature_probe"] or {}).get("accuracy"),
        "curve": curve.points if curve else None,
        "model": model,
    }


def scenario(
    forget: list[int],
    original: torch.nn.Module,
    setup: dict[str, Any],
    train: data.ImageSource,
    test: data.ImageSource,
    device: torch.device,
    methods: list[str],
) -> dict[str, Any]:
    forget_idx = np.flatnonzero(np.isin(train.targets, forget))
    retain_idx = np.flatnonzero(~np.isin(train.targets, forget))
    sets = verify.eval_sets(train, test, forget_idx, retain_idx, forget, train.classes)
    task_args = {
        "source": train,
        "forget_idx": forget_idx,
        "retain_idx": retain_idx,
        "forget_classes": forget,
        "num_classes": len(train.classes),
        "spec": setup["spec"],
    }
    before = verify.measure(original, sets, setup["spec"], device)
    rows = []
    for name in methods:
        print(f"  {name} ...", file=sys.stderr, flush=True)
        rows.append(run_method(name, original, setup, task_args, sets, device))
    summary: dict[str, Any] = {"forget": [train.classes[c] for c in forget], "unsir": {}}
    retrained = next((r for r in rows if r["method"] == "retrain"), None)
    for u in rows:
        if retrained is None or not u["method"].startswith("unsir"):
            continue
        reach = _time_to_points(retrained["curve"], u["retain_test"])
        summary["unsir"][u["method"]] = {
            "retrain_over_unsir": retrained["seconds"] / u["seconds"],
            "retrain_seconds_to_same_retain_accuracy": reach,
            "retrain_to_same_accuracy_over_unsir": reach / u["seconds"] if reach else None,
            "retain_gap_to_retrain": u["retain_test"] - retrained["retain_test"],
            "mia_gap_to_retrain": u["entropy_mia"] - retrained["entropy_mia"],
        }
    for row in rows:
        row.pop("model")
        row |= confusion_distances(before, row, retrained)
    return {
        "before": {
            k: before["accuracy"][k] for k in ("forget_train", "forget_test", "retain_test", "test")
        }
        | {
            "entropy_mia": before["mia"]["entropy"]["forget_member_rate"],
            "mia_efficacy": before["mia"]["efficacy"],
            "feature_probe": (before["feature_probe"] or {}).get("accuracy"),
        },
        "rows": rows,
        "summary": summary,
    }


def confusion_distances(
    before: dict[str, Any], row: dict[str, Any], retrained: dict[str, Any] | None
) -> dict[str, float | None]:
    """Mean total variation, over the forgotten classes, between where a method sends their
    held-out images and the original's second choice, and the retrained model's choice."""
    found = verify.confusion_against_second_choice(
        before,
        {"forget_confusion": row["forget_confusion"]},
        {"forget_confusion": retrained["forget_confusion"]} if retrained else None,
    )
    if found is None:
        return {"confusion_tv": None, "confusion_tv_to_retrain": None}
    to_retrain = [
        r["total_variation_to_reference"]
        for r in found["per_class"].values()
        if r.get("total_variation_to_reference") is not None
    ]
    return {
        "confusion_tv": found["mean_total_variation"],
        "confusion_tv_to_retrain": float(np.mean(to_retrain)) if to_retrain else None,
    }


def _time_to_points(points: list[tuple[float, float]], accuracy: float) -> float | None:
    return next((t for t, a in points if a >= accuracy), None)


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def tv(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def table(result: dict[str, Any]) -> str:
    lines = [
        "| method | forget acc (train / test) | retain acc (test) | test acc | entropy MIA | "
        "MIA-Efficacy | feature probe on the forget classes | forget images' confusion vs the "
        "original's 2nd choice (TV) | vs retrain's (TV) | wall time | samples processed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    b = result["before"]
    lines.append(
        f"| original | {pct(b['forget_train'])} / {pct(b['forget_test'])} | "
        f"{pct(b['retain_test'])} | {pct(b['test'])} | {pct(b['entropy_mia'])} | "
        f"{pct(b['mia_efficacy'])} | {pct(b['feature_probe'])} | | | | |"
    )
    for r in result["rows"]:
        lines.append(
            f"| {r['method']} | {pct(r['forget_train'])} / {pct(r['forget_test'])} | "
            f"{pct(r['retain_test'])} | {pct(r['test'])} | {pct(r['entropy_mia'])} | "
            f"{pct(r['mia_efficacy'])} | {pct(r['feature_probe'])} | {tv(r['confusion_tv'])} | "
            f"{tv(r['confusion_tv_to_retrain'])} | {r['seconds']:.2f} s | "
            f"{r['samples_processed']:,} |"
        )
    for label, s in result["summary"]["unsir"].items():
        reach = s["retrain_seconds_to_same_retain_accuracy"]
        lines.append("")
        lines.append(
            f"{label}: retrain time / UNSIR time **{s['retrain_over_unsir']:.1f}x**; retraining "
            + (
                f"reached its retain accuracy after {reach:.2f} s "
                f"(**{s['retrain_to_same_accuracy_over_unsir']:.1f}x** its time)"
                if reach
                else "never reached its retain accuracy (within the original's recipe)"
            )
            + f"; retain gap to retrain {s['retain_gap_to_retrain'] * 100:+.1f} points, "
            f"entropy-MIA gap {s['mia_gap_to_retrain'] * 100:+.1f} points."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", choices=sorted(SETUPS), default="digits")
    parser.add_argument("--root", default=None, help="Fashion-MNIST root (holds FashionMNIST/raw)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--methods",
        default=",".join(ORDER),
        help="comma-separated; label=method runs a variant, e.g. unsir_lr=unsir",
    )
    parser.add_argument(
        "--params",
        default="{}",
        help='per-method overrides as JSON, e.g. {"finetune": {"epochs": 1}}',
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    device = torch.device(args.device)
    setup = copy.deepcopy(SETUPS[args.dataset])
    for name, override in json.loads(args.params).items():
        setup["params"][name] = {**setup["params"].get(name, {}), **override}
    train, test = data.open_splits(setup["kind"], args.root)
    torch.manual_seed(0)
    original = architectures.build_classifier(setup["arch"], len(train.classes), setup["args"])
    sync(device)
    start = time.perf_counter()
    train_classifier(
        original, train, np.arange(len(train)), setup["spec"], **setup["train"], device=device
    )
    sync(device)
    train_s = time.perf_counter() - start
    head = (
        f"{args.dataset}: {setup['arch']} {setup['args']}, {len(train):,} train / {len(test):,} "
        f"test images, {device_name(device)}, torch {torch.__version__}; original trained in "
        f"{train_s:.1f} s ({setup['train']})"
    )
    print(head, flush=True)
    results = {"setup": head, "params": setup["params"], "scenarios": []}
    for forget in setup["forget"]:
        print(f"forgetting {forget}", file=sys.stderr, flush=True)
        result = scenario(forget, original, setup, train, test, device, args.methods.split(","))
        results["scenarios"].append(result)
        print(
            f"\n**Forget {', '.join(result['summary']['forget'])}**\n\n{table(result)}\n",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
