"""Time one UNSIR job on real data, on CPU or GPU, with the library the workers run.

    python bench/unsir_job.py --dataset digits                      # about 10 s on a 2-core CPU
    python bench/unsir_job.py --dataset fashion --root var/data     # ResNet-18-class: minutes

It trains the original model, runs UNSIR (official defaults on Fashion-MNIST; the small-data recipe
on digits, whose 1,400 training images make the default single repair epoch only ~5 steps), and
evaluates before and after on the held-out split. Prints a markdown row and writes JSON.
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

from unlearning import architectures, data
from unlearning.evaluate import accuracy_report, count_correct
from unlearning.methods.unsir import RetainSubset, UnsirConfig, unsir
from unlearning.train import train_classifier

SETUPS: dict[str, dict[str, Any]] = {
    "digits": {
        "kind": "sklearn_digits",
        "arch": "tiny_cnn",
        "args": {"in_channels": 1},
        "spec": data.InputSpec((1, 8, 8), (0.5,), (0.5,)),
        "epochs": 15,
        "lr": 3e-3,
        "batch": 64,
        "unsir": {"repair_epochs": 3, "repair_batch_size": 32},
    },
    "fashion": {
        "kind": "fashion_mnist",
        "arch": "small_resnet",
        "args": {"in_channels": 1, "width": 64, "blocks": [2, 2, 2, 2]},
        "spec": data.InputSpec((1, 28, 28), (0.2860,), (0.3530,)),
        "epochs": 3,
        "lr": 1e-3,
        "batch": 256,
        "unsir": {},
    },
}


def run(
    name: str, root: str | None, device: torch.device, forget: list[int], params: dict[str, Any]
) -> dict[str, Any]:
    setup = SETUPS[name]
    train = data.open_split(setup["kind"], root, "train")
    test = data.open_split(setup["kind"], root, "test")
    n = len(train.classes)
    spec = setup["spec"]
    model = architectures.build_classifier(setup["arch"], n, setup["args"]).to(device)
    start = time.perf_counter()
    train_classifier(
        model,
        train,
        np.arange(len(train)),
        spec,
        epochs=setup["epochs"],
        lr=setup["lr"],
        batch_size=setup["batch"],
        device=device,
    )
    sync(device)
    train_s = time.perf_counter() - start
    everything = np.arange(len(test))
    before = accuracy_report(
        count_correct(model, test, everything, spec, n, device), forget, train.classes
    )
    config = UnsirConfig(**{**setup["unsir"], **params})
    retain = [c for c in range(n) if c not in forget]
    chosen = data.sample_per_class(train.targets, retain, config.retain_per_class, config.seed)
    subset = RetainSubset(train, chosen)
    unlearned = copy.deepcopy(model)
    sync(device)
    start = time.perf_counter()
    result = unsir(unlearned, forget, subset, spec, config, device=device)
    sync(device)
    unsir_s = time.perf_counter() - start
    after = accuracy_report(
        count_correct(unlearned, test, everything, spec, n, device), forget, train.classes
    )
    return {
        "dataset": name,
        "arch": setup["arch"],
        "arch_args": setup["args"],
        "device": device_name(device),
        "forget": [train.classes[c] for c in forget],
        "train_images": len(train),
        "train_epochs": setup["epochs"],
        "train_seconds": train_s,
        "train_images_per_s": setup["epochs"] * len(train) / train_s,
        "unsir_seconds": unsir_s,
        "phase_seconds": result.phase_seconds,
        "samples_processed": result.samples_processed,
        "params": config.as_dict(),
        "before": {k: before[k] for k in ("forget_accuracy", "retain_accuracy")},
        "after": {k: after[k] for k in ("forget_accuracy", "retain_accuracy")},
        "torch": torch.__version__,
    }


def markdown_row(r: dict[str, Any]) -> str:
    p = r["phase_seconds"]
    return (
        f"| {r['dataset']} | {r['arch']} | {r['device']} | {', '.join(r['forget'])} | "
        f"{r['train_seconds']:.1f} ({r['train_images_per_s']:.0f} img/s) | "
        f"{p['noise']:.2f} / {p['impair']:.2f} / {p['repair']:.2f} | "
        f"**{r['unsir_seconds']:.2f}** | "
        f"{r['before']['forget_accuracy']:.1%} → {r['after']['forget_accuracy']:.1%} | "
        f"{r['before']['retain_accuracy']:.1%} → {r['after']['retain_accuracy']:.1%} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", choices=sorted(SETUPS), default="digits")
    parser.add_argument("--root", default=None, help="Fashion-MNIST root (holds FashionMNIST/raw)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--forget", default="3,8", help="class indices, comma-separated")
    parser.add_argument("--params", default="{}", help="UNSIR parameters as JSON (overrides)")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    args = parser.parse_args()
    torch.manual_seed(0)
    forget = [int(c) for c in args.forget.split(",")]
    result = run(
        args.dataset, args.root, torch.device(args.device), forget, json.loads(args.params)
    )
    print(markdown_row(result))
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
