"""Default deletion requests on image-to-image checkpoints of the three library families, run
as the worker runs them (``unlearning.jobs.i2i.run``, without the database).

    python bench/i2i_libraries.py --root var/data                  # every family, both requests
    python bench/i2i_libraries.py --root var/data --family unet --request classes

For each family (a transformers ViTMAEForPreTraining, a diffusers UNet2DModel conditioned on the
masked image and the mask, a diffusers VQModel), a small configuration is built from the
library's config class and trained on Fashion-MNIST (28x28, normalisation 0.5/0.5, centre
square 0.5) with its own loss (MAE: masked pixels; U-Net: DDPM noise prediction; VQ-GAN:
reconstruction and commitment), then saved with ``save_pretrained`` under var/bench/i2i_lib/
(reused when present). Each request has no parameters: forget T-shirt/top and Pullover, or
1,000 random training images. Prints one markdown row per run and appends its JSON to
var/bench/i2i_libraries.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from report import device_name  # bench/, on the path as the script's folder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unlearning import checkpoints, data
from unlearning.i2i import architectures, masks
from unlearning.i2i.train import train_inpainter
from unlearning.jobs.common import JobSpec, NoProgress

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "var" / "bench"
SPEC = data.InputSpec((1, 28, 28), (0.5,), (0.5,))
TRANSFORM = masks.Transform("center_square", 0.5)
FORGET = [0, 2]  # T-shirt/top, Pullover
TRAIN = {"images": 12_000, "epochs": 5, "lr": 2e-3, "batch_size": 64, "seed": 0}
# The transformer trains at a smaller step (at 2e-3 its completions stalled near a grey fill);
# the convolutional networks on fewer images, to fit the 2-core CPU (about 100 images/s).
TRAIN_LR = {"mae": 5e-4}
TRAIN_IMAGES = {"unet": 6_000, "vq": 3_000}
TRAIN_EPOCHS = {"unet": 8}


def build_library_model(family: str) -> Any:
    torch.manual_seed(TRAIN["seed"])
    if family == "mae":
        from transformers import ViTMAEConfig, ViTMAEForPreTraining

        from unlearning.i2i.pretrained import set_mae_position_tables

        mae = ViTMAEForPreTraining(
            ViTMAEConfig(
                image_size=28,
                patch_size=4,
                num_channels=1,
                hidden_size=64,
                num_hidden_layers=4,
                num_attention_heads=4,
                intermediate_size=128,
                decoder_hidden_size=64,
                decoder_num_hidden_layers=2,
                decoder_num_attention_heads=4,
                decoder_intermediate_size=128,
            )
        )
        set_mae_position_tables(mae)
        return mae
    from diffusers import UNet2DModel, VQModel

    if family == "unet":
        return UNet2DModel(
            sample_size=28,
            in_channels=3,
            out_channels=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            layers_per_block=1,
            norm_num_groups=8,
        )
    return VQModel(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=8,
        num_vq_embeddings=256,
        vq_embed_dim=8,
        norm_num_groups=8,
        sample_size=28,
    )


NAMES = {
    "mae": "transformers:ViTMAEForPreTraining",
    "unet": "diffusers:UNet2DModel",
    "vq": "diffusers:VQModel",
}


def original(
    family: str, train: data.ImageSource, epochs: int | None = None
) -> tuple[Path, dict[str, Any]]:
    """The trained original as save_pretrained wrote it, and how it was trained."""
    epochs = epochs or TRAIN_EPOCHS.get(family, int(TRAIN["epochs"]))
    default = epochs == TRAIN_EPOCHS.get(family, int(TRAIN["epochs"]))
    folder = OUT / "i2i_lib" / (family if default else f"{family}-{epochs}-epochs")
    info_path = folder / "training.json"
    if info_path.exists():
        return folder, json.loads(info_path.read_text())
    library = build_library_model(family)
    library.save_pretrained(folder)  # the config.json a user holds
    config = json.loads((folder / "config.json").read_text())
    model = architectures.build(NAMES[family], SPEC.shape, {"config": config})
    rng = np.random.default_rng(TRAIN["seed"])
    images = TRAIN_IMAGES.get(family, int(TRAIN["images"]))
    subset = np.sort(rng.choice(len(train), size=images, replace=False))
    lr = TRAIN_LR.get(family, float(TRAIN["lr"]))
    start = time.perf_counter()
    stats = train_inpainter(
        model,
        train,
        subset,
        SPEC,
        TRANSFORM,
        epochs=epochs,
        lr=lr,
        batch_size=TRAIN["batch_size"],
        seed=TRAIN["seed"],
    )
    seconds = time.perf_counter() - start
    (weights,) = folder.glob("*.safetensors")
    weights.write_bytes(checkpoints.canonical_bytes(checkpoints.file_state(model)))
    info = {
        **TRAIN,
        "images": images,
        "epochs": epochs,
        "lr": lr,
        "seconds": seconds,
        "samples": stats["samples"],
        "final_loss": stats["loss"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": device_name(torch.device("cpu")),
    }
    info_path.write_text(json.dumps(info, indent=2))
    return folder, info


def job_spec(
    family: str,
    config: dict[str, Any],
    request: str,
    root: str,
    trained: dict[str, Any],
    params: dict[str, Any],
) -> JobSpec:
    train = data.open_split("fashion_mnist", root, "train")
    samples = None
    if request == "samples":
        picked = np.random.default_rng(1).choice(len(train), 1000, replace=False)
        samples = [train.ids[i] for i in sorted(picked)]
    net = architectures.build_on_meta(NAMES[family], SPEC.shape, {"config": config})
    return JobSpec(
        method="i2i",
        params=params,
        forget_classes=FORGET if request == "classes" else None,
        forget_samples=samples,
        acceptance={},
        reference=None,
        measure_relearn_time=False,
        architecture=NAMES[family],
        architecture_args={"config": config},
        class_names=[],
        input_spec=SPEC,
        dataset_kind="fashion_mnist",
        dataset_location=root,
        task="image_to_image",
        encoder=architectures.resolve_encoder(net, None),
        transform={"kind": TRANSFORM.kind, "size": TRANSFORM.size, "cell": TRANSFORM.cell},
        dataset_class_names=list(train.classes),
        training={"epochs": trained["epochs"] * trained["images"] / len(train)},
    )


def run(
    family: str,
    request: str,
    root: str,
    params: dict[str, Any],
    train_epochs: int | None = None,
) -> dict[str, Any]:
    from unlearning.jobs import i2i as i2i_job

    train = data.open_split("fashion_mnist", root, "train", size=(28, 28))
    folder, trained = original(family, train, train_epochs)
    config = json.loads((folder / "config.json").read_text())
    (weights,) = folder.glob("*.safetensors")
    spec = job_spec(family, config, request, root, trained, params)
    start = time.perf_counter()
    outcome = i2i_job.run(spec, weights, torch.device("cpu"), NoProgress())
    total = time.perf_counter() - start
    m = outcome.metrics
    row = {
        "family": family,
        "architecture": NAMES[family],
        "request": request,
        "params": params,
        "date": time.strftime("%Y-%m-%d"),
        "device": device_name(torch.device("cpu")),
        "job_seconds": total,
        "original": trained,
        "metrics": m,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "i2i_libraries.jsonl").open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    (OUT / f"i2i_lib_{family}_{request}.png").write_bytes(outcome.artifacts["completions.png"][1])
    return row


def markdown(row: dict[str, Any]) -> str:
    m = row["metrics"]
    b, a, ch = m["before"], m["after"], m["change"]
    passes = m["cost"]["sample_passes"]["method"]
    trained = row["original"]["samples"]
    gate = (
        "yes"
        if m["acceptance"]["passed"]
        else "no: "
        + ", ".join(f"{f['check']} {f['measured']:.2f}" for f in m["acceptance"]["failures"])
    )
    asked = f"`{json.dumps(row['params'])}`" if row["params"] else "defaults"
    recipe = m["method_details"]["resolved_params"]["recipe"]
    return (
        f"| {row['architecture']} | {row['request']} | {asked} ({recipe}) | "
        f"{b['retain']['psnr']:.2f} → "
        f"{a['retain']['psnr']:.2f} ({ch['retain']['psnr']:+.2f}) | {b['forget']['psnr']:.2f} → "
        f"{a['forget']['psnr']:.2f} ({ch['forget']['psnr']:+.2f}) | {a['retain']['ssim']:.3f} / "
        f"{a['forget']['ssim']:.3f} | {b['forget']['fd_random']:.3g} → "
        f"{a['forget']['fd_random']:.3g} | {a['forget']['encoder_cosine']:.3f} | "
        f"{'yes' if m['weights']['frozen_unchanged'] else 'NO'} | {gate} | {passes:,.0f} "
        f"({passes / trained:.1%}) | {m['phase_seconds']['i2i']:.1f} | "
        f"{row['original']['seconds']:.0f} |"
    )


HEADER = (
    "| network | request | method params (recipe) | retain PSNR (dB) | forget PSNR (dB) "
    "| SSIM after retain / forget "
    "| forget fd_random | forget enc. cosine | decoder unchanged | gate passed | method "
    "sample passes (share of training) | method (s) | original's training (s) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="var/data")
    parser.add_argument("--family", choices=sorted(NAMES), action="append")
    parser.add_argument("--request", choices=["classes", "samples"], action="append")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--params", default="{}", help="method parameters (JSON); none: defaults")
    parser.add_argument("--train-epochs", type=int, help="train the original this long instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(HEADER)
    for family in args.family or sorted(NAMES):
        for request in args.request or ["classes", "samples"]:
            row = run(family, request, args.root, json.loads(args.params), args.train_epochs)
            print(markdown(row), flush=True)


if __name__ == "__main__":
    main()
