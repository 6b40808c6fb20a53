"""A transformers MAE, a diffusers inpainting U-Net and a diffusers VQ-GAN, each built from its
library's config class and saved with save_pretrained, go through real API and worker processes:
registered from config.json, weights uploaded, two digit classes forgotten, the result downloaded
and reloaded with the library's own from_pretrained, the decoder bit-for-bit unchanged and the
reported completions those of the downloaded weights."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from client.api import NepentheClient
from tests.i2i_libraries import SAVERS, SHAPE, Saved
from unlearning import checkpoints, data
from unlearning.i2i import architectures, masks
from unlearning.i2i import verify as i2i_verify

pytestmark = pytest.mark.e2e

SPEC = data.InputSpec((1, 28, 28), (0.5,), (0.5,))
TRANSFORM = masks.Transform("center_square", 0.5)
# A short run: the method's quality is measured in bench/i2i_libraries.py, not here.
PARAMS = {"epochs": 1, "images_per_class": 16, "batch_size": 16, "lr": 1e-3}
NO_GATE = {"max_retain_psnr_drop": None, "min_forget_psnr_drop": None}
ENCODERS = {
    "mae": ["vit."],
    "unet": ["down_blocks.", "mid_block."],
    "vq": ["encoder.", "quant_conv."],
}


def register(client: NepentheClient, saved: Saved) -> dict[str, Any]:
    model = client.register_model(
        name=f"digits-{saved.folder.name}",
        task="image_to_image",
        architecture={"name": saved.name, "args": saved.args()},
        input_shape=SHAPE,
        normalization={"mean": [0.5], "std": [0.5]},
        training={"epochs": 10},
    )
    version = client.upload_version(model["id"], saved.weights)
    return {"model": model, "version": version}


def measured(saved: Saved, weights: Path) -> dict[str, Any]:
    """Completions of the downloaded weights, measured here with the library code."""
    model = architectures.build(saved.name, SHAPE, saved.args())
    checkpoints.load_into(model, checkpoints.load_file(weights))
    train, test = data.open_splits("sklearn_digits", None, size=(28, 28))
    forget = np.flatnonzero(np.isin(train.targets, [3, 8]))
    sets = i2i_verify.eval_sets(train, test, forget, [3, 8])
    report, _ = i2i_verify.measure(model, sets, SPEC, TRANSFORM, torch.device("cpu"))
    return report


@pytest.mark.parametrize("service_env", ["production"], indirect=True)
def test_library_checkpoints_forget_and_reload_with_their_library(client, tmp_path):
    dataset = client.register_dataset("digits", "sklearn_digits")
    for family, save in sorted(SAVERS.items()):
        saved = save(tmp_path / family)
        reg = register(client, saved)
        assert reg["model"]["encoder"] == ENCODERS[family]
        request, _ = client.submit_deletion(
            idempotency_key=str(uuid.uuid4()),
            model_version_id=reg["version"]["id"],
            dataset_id=dataset["id"],
            forget_classes=["3", "8"],
            params=PARAMS,
            acceptance=NO_GATE,
        )
        job = client.wait(request["job"]["id"], timeout=600)
        assert job["status"] == "succeeded", (family, job["error"])
        m = job["metrics"]
        assert m["weights"]["frozen_unchanged"] is True, (family, m["weights"])
        assert m["weights"]["encoder_tensors_changed"] > 0
        passes = 10 if family == "unet" else 1  # DDIM steps per completed image
        images = 2 * (m["before"]["retain"]["samples"] + m["before"]["forget"]["samples"])
        assert m["samples_processed"]["forward_only"] >= images * passes

        # The download, next to the config.json, is a checkpoint the library loads itself.
        reloaded = tmp_path / f"{family}-unlearned"
        shutil.copytree(saved.folder, reloaded)
        client.download(job["output_version"]["download_url"], reloaded / saved.weights.name)
        original = saved.library_class.from_pretrained(saved.folder).state_dict()
        unlearned = saved.library_class.from_pretrained(reloaded).state_dict()
        assert original.keys() == unlearned.keys()
        moved = {k for k in original if not torch.equal(original[k], unlearned[k])}
        assert moved and all(k.startswith(tuple(ENCODERS[family])) for k in moved), family

        mine = measured(saved, reloaded / saved.weights.name)
        for group in ("retain", "forget"):
            assert mine[group]["psnr"] == pytest.approx(m["after"][group]["psnr"], abs=1e-3)
            assert mine[group]["samples"] == m["after"][group]["samples"]
        assert m["after"]["transform"]["kind"] == (
            "reconstruction" if family == "vq" else "center_square"
        )
