"""Time one image-to-image encoder-unlearning job on real data, on CPU or GPU, with the library
the workers run.

    python bench/i2i_job.py --dataset fashion --root var/data --arch mae_vit --forget 0,2
    python bench/i2i_job.py --dataset fashion --root var/data --arch unet_inpainter --forget 0,2 \
        --params '{"lr": 1e-3, "epochs": 10, "alpha": 0.3, "retain_ratio": 2}'
    python bench/i2i_job.py --dataset fashion --root var/data --arch unet_inpainter --forget 0,2 \
        --encoder encoder.middle.,encoder.downs.,encoder.input_blocks.1. \
        --params '{"lr": 1e-3, "epochs": 10, "alpha": 1.0, "retain_ratio": 2}'

It trains the original inpainter (centre square 0.5, normalisation mean 0.5 / std 0.5) on a seeded
subset of the training split, or reuses the one cached under var/bench/ for the same network, data
and training settings. Then it runs one job as the service's recipe (``unlearning/jobs/i2i.py``)
does, without the database: measure completions of held-out forget-class and other-class images,
run the method on the training split (forget = every training image of the forget classes,
retain = the rest), measure again, apply the default acceptance gate and check that nothing
outside the trained encoder prefixes (``--encoder``, as ``I2ITask.encoder``; the whole encoder by
default) moved. Prints a markdown row, writes JSON and the before/after completion grid (PNG)
under var/bench/.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from report import device_name, sync  # bench/, on the path as the script's folder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unlearning import acceptance, data, verify
from unlearning.i2i import architectures, masks
from unlearning.i2i import verify as i2i_verify
from unlearning.i2i.train import train_inpainter
from unlearning.jobs.i2i import change
from unlearning.methods.i2i import I2IConfig, I2ITask, run_i2i

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "var" / "bench"
EVAL_SEED = 0  # as the workers: the evaluation groups are the same for every job on the data
TRANSFORM = masks.Transform("center_square", 0.5)
SETUPS: dict[str, dict[str, Any]] = {
    "fashion": {"kind": "fashion_mnist", "spec": data.InputSpec((1, 28, 28), (0.5,), (0.5,))},
    # 8x8 digits upsampled to 16x16, as the demo does, so a 4-pixel patch grid is 4x4.
    "digits": {"kind": "sklearn_digits", "spec": data.InputSpec((1, 16, 16), (0.5,), (0.5,))},
}
ARCH_ARGS: dict[str, dict[str, Any]] = {
    "mae_vit": {"dim": 48, "depth": 3, "decoder_dim": 48, "heads": 4, "patch_size": 4},
    "unet_inpainter": {"base": 16, "levels": 2},
}
# Sized for about 1 to 3 minutes of training on the 2-core development CPU (one torch thread).
TRAIN_DEFAULTS: dict[str, dict[str, int]] = {
    "mae_vit": {"images": 12_000, "epochs": 8},
    "unet_inpainter": {"images": 6_000, "epochs": 8},
}
TRAIN_LR, TRAIN_BATCH, TRAIN_SEED = 2e-3, 64, 0


def _digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:10]


def original_model(
    dataset: str,
    train: data.ImageSource,
    arch: str,
    arch_args: dict[str, Any],
    spec: data.InputSpec,
    train_images: int,
    train_epochs: int,
    device: torch.device,
) -> tuple[architectures.I2IModel, dict[str, Any]]:
    """The trained original, from the cache under var/bench/ when the same settings trained one
    before (its training figures are the cached run's)."""
    settings = {
        "dataset": dataset,
        "arch": arch,
        "arch_args": arch_args,
        "shape": list(spec.shape),
        "mean": list(spec.mean),
        "std": list(spec.std),
        "train_images": train_images,
        "epochs": train_epochs,
        "lr": TRAIN_LR,
        "batch_size": TRAIN_BATCH,
        "seed": TRAIN_SEED,
        "transform": {"kind": TRANSFORM.kind, "size": TRANSFORM.size, "cell": TRANSFORM.cell},
    }
    stem = BENCH_DIR / f"i2i_original_{dataset}_{arch}_{_digest(settings)}"
    weights, info_path = stem.with_suffix(".pt"), stem.with_suffix(".json")
    torch.manual_seed(TRAIN_SEED)
    model = architectures.build(arch, spec.shape, arch_args)
    if weights.exists() and info_path.exists():
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        info = json.loads(info_path.read_text())
        return model.to(device).eval(), {**info, "cached": True, "cache": str(weights)}
    n = min(train_images, len(train))
    rng = np.random.default_rng(TRAIN_SEED)
    subset = np.sort(rng.choice(len(train), size=n, replace=False))
    sync(device)
    start = time.perf_counter()
    stats = train_inpainter(
        model,
        train,
        subset,
        spec,
        TRANSFORM,
        epochs=train_epochs,
        lr=TRAIN_LR,
        batch_size=TRAIN_BATCH,
        seed=TRAIN_SEED,
        device=device,
    )
    sync(device)
    seconds = time.perf_counter() - start
    info = {
        "settings": settings,
        "images": n,
        "seconds": seconds,
        "images_per_s": stats["samples"] / seconds,
        "final_loss": stats["loss"],
        "device": device_name(device),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
    info_path.write_text(json.dumps(info, indent=2))
    return model.eval(), {**info, "cached": False, "cache": str(weights)}


def run(
    name: str,
    root: str | None,
    arch: str,
    arch_args: dict[str, Any],
    device: torch.device,
    forget: list[int],
    params: dict[str, Any],
    train_images: int,
    train_epochs: int,
    declared: list[str] | None = None,
) -> tuple[dict[str, Any], bytes]:
    setup = SETUPS[name]
    spec: data.InputSpec = setup["spec"]
    train, test = data.open_splits(setup["kind"], root)
    model, training = original_model(
        name, train, arch, arch_args, spec, train_images, train_epochs, device
    )
    original = copy.deepcopy(model).to(device)
    forget_mask = np.isin(train.targets, forget)
    forget_idx, retain_idx = np.flatnonzero(forget_mask), np.flatnonzero(~forget_mask)
    sets = i2i_verify.eval_sets(train, test, forget_idx, forget, seed=EVAL_SEED)

    sync(device)
    start = time.perf_counter()
    before, before_done = i2i_verify.measure(original, sets, spec, TRANSFORM, device)
    sync(device)
    eval_before_s = time.perf_counter() - start

    encoder = architectures.resolve_encoder(model, declared)  # as the service checks a declaration
    task = I2ITask(
        model, train, forget_idx, train, retain_idx, forget, spec, TRANSFORM, encoder, device
    )
    config = I2IConfig(**params)
    sync(device)
    start = time.perf_counter()
    result = run_i2i(task, config)
    sync(device)
    method_wall_s = time.perf_counter() - start
    finite = all(
        bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point()
    )

    start = time.perf_counter()
    after, after_done = i2i_verify.measure(
        model, sets, spec, TRANSFORM, device, originals=before_done
    )
    sync(device)
    eval_after_s = time.perf_counter() - start
    failed = acceptance.i2i_failures(acceptance.I2I_DEFAULTS, before, after)
    weights = i2i_verify.weights_unchanged(model, original, encoder)
    distance = verify.weight_distance(model, original)
    grid = i2i_verify.completion_grid(before_done, after_done)
    method_s = result.phase_seconds["i2i"]
    summary = {
        "dataset": name,
        "dataset_kind": setup["kind"],
        "arch": arch,
        "arch_args": arch_args,
        "parameters": training["parameters"],
        "params": params,
        "encoder": encoder,
        "encoder_parameters": sum(
            p.numel() for n, p in model.named_parameters() if architectures.trainable(n, encoder)
        ),
        "device": device_name(device),
        "forget": [train.classes[c] for c in forget],
        "forget_classes": forget,
        "train_split_images": len(train),
        "forget_train_images": len(forget_idx),
        "retain_train_images": len(retain_idx),
        "transform": before["transform"],
        "normalization": {"mean": list(spec.mean), "std": list(spec.std)},
        "original_training": training,
        "seconds": {
            "original_training": training["seconds"],
            "method": method_s,
            "method_wall": method_wall_s,
            "evaluate_before": eval_before_s,
            "evaluate_after": eval_after_s,
            "job_total": method_s + eval_before_s + eval_after_s,
        },
        "samples_processed": {
            **result.samples_processed,
            "forward_only": 2 * i2i_verify.forward_samples(before),
        },
        "before": before,
        "after": after,
        "change": change(before, after),
        "acceptance": {
            "thresholds": dataclasses.asdict(acceptance.I2I_DEFAULTS),
            "passed": not failed,
            "failures": failed,
        },
        "weights": weights,
        "weights_finite": finite,
        "weight_distance": {k: v for k, v in distance.items() if k != "layers"},
        "method_details": result.details,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }
    return summary, grid


def _arrow(before: float | None, after: float | None, fmt: str) -> str:
    def one(v: float | None) -> str:
        return "n/a" if v is None else format(v, fmt)

    return f"{one(before)} → {one(after)}"


def markdown_row(r: dict[str, Any]) -> str:
    b, a, s = r["before"], r["after"], r["seconds"]
    params = json.dumps(r["params"]) if r["params"] else "defaults"
    if r.get("encoder", [architectures.ENCODER_PREFIX]) != [architectures.ENCODER_PREFIX]:
        params += f"` encoder `{','.join(r['encoder'])}"
    net = f"{r['arch']} {json.dumps(r['arch_args'])}"
    recipe = r["method_details"]["resolved_params"]["recipe"]
    return (
        f"| {r['dataset']} | {net} | `{params}` ({recipe}) | {r['device']} | "
        f"{', '.join(r['forget'])} | "
        f"{_arrow(b['retain']['psnr'], a['retain']['psnr'], '.2f')} | "
        f"{_arrow(b['forget']['psnr'], a['forget']['psnr'], '.2f')} | "
        f"{_arrow(b['retain']['ssim'], a['retain']['ssim'], '.3f')} / "
        f"{_arrow(b['forget']['ssim'], a['forget']['ssim'], '.3f')} | "
        f"{_arrow(b['forget']['fd_random'], a['forget']['fd_random'], '.3g')} | "
        f"{a['forget']['encoder_cosine']:.3f} | "
        f"{'yes' if r['weights']['frozen_unchanged'] else 'no'} | "
        f"{'yes' if r['acceptance']['passed'] else 'no'} | "
        f"{s['method']:.1f} | **{s['job_total']:.1f}** |"
    )


HEADER = (
    "| data | network | method params (recipe) | device | forget | retain PSNR (dB) | "
    "forget PSNR (dB) | SSIM retain / forget | forget fd_random | forget enc. cosine | "
    "decoder unchanged | gate passed | method (s) | job total (s) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=sorted(SETUPS), default="fashion")
    parser.add_argument("--root", default=None, help="Fashion-MNIST root (holds FashionMNIST/raw)")
    parser.add_argument("--arch", choices=sorted(ARCH_ARGS), default="mae_vit")
    parser.add_argument("--arch-args", default=None, help="network arguments as JSON (replace)")
    parser.add_argument("--forget", default="0,2", help="class indices, comma-separated")
    parser.add_argument("--params", default="{}", help="I2I method parameters as JSON")
    parser.add_argument(
        "--encoder",
        default=architectures.ENCODER_PREFIX,
        help="parameter-name prefixes that train, comma-separated (I2ITask.encoder)",
    )
    parser.add_argument("--train-images", type=int, default=None, help="original's train subset")
    parser.add_argument("--train-epochs", type=int, default=None, help="original's epochs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default var/bench/)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    forget = [int(c) for c in args.forget.split(",")]
    declared = [p.strip() for p in args.encoder.split(",") if p.strip()]
    params = json.loads(args.params)
    arch_args = json.loads(args.arch_args) if args.arch_args else ARCH_ARGS[args.arch]
    defaults = TRAIN_DEFAULTS[args.arch]
    if args.dataset == "digits":  # 1,428 training images: all of them, more passes (the demo)
        defaults = {"images": 1_428, "epochs": 20}
    train_images = args.train_images or defaults["images"]
    train_epochs = args.train_epochs or defaults["epochs"]
    result, grid = run(
        args.dataset,
        args.root,
        args.arch,
        arch_args,
        torch.device(args.device),
        forget,
        params,
        train_images,
        train_epochs,
        declared,
    )
    tag = f"{args.dataset}_{args.arch}_{'defaults' if not params else _digest(params)}"
    if declared != [architectures.ENCODER_PREFIX]:
        tag += f"_enc{_digest(declared)}"
    out = args.out or BENCH_DIR / f"i2i_{tag}.json"
    grid_path = BENCH_DIR / f"i2i_{tag}.png"
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid_path.write_bytes(grid)
    result["grid"] = str(grid_path)
    out.write_text(json.dumps(result, indent=2))
    t = result["original_training"]
    print(
        f"original: {t['images']} images x {t['settings']['epochs']} epochs, "
        f"{t['seconds']:.1f} s ({t['images_per_s']:.0f} img/s)"
        f"{', cached' if t['cached'] else ''}; json: {out}; grid: {grid_path}"
    )
    print(HEADER)
    print(markdown_row(result))


if __name__ == "__main__":
    main()
