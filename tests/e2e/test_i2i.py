"""Image-to-image unlearning through real processes and the HTTP API: a masked autoencoder
trained on real digits forgets two classes (retain PSNR within 1 dB, forget completions clearly
worse, decoder bit-for-bit unchanged), a sample request with a proxy retain set, and a result
the gate rejects."""

from __future__ import annotations

import hashlib
import io
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from client.api import NepentheClient
from client.demo_i2i import SMALL_MODEL_PARAMS, frozen_unchanged, measure_download, model_body
from tests.helpers import i2i_trained_state
from unlearning import data

pytestmark = pytest.mark.e2e


def register(client: NepentheClient, tmp_path: Path) -> dict[str, Any]:
    weights = tmp_path / "original.safetensors"
    safetensors.torch.save_file(i2i_trained_state(), str(weights))
    model = client.register_model(**model_body("digits-mae"))
    version = client.upload_version(model["id"], weights)
    dataset = client.register_dataset("digits", "sklearn_digits")
    return {"model": model, "version": version, "dataset": dataset, "weights": weights}


def submit(client: NepentheClient, reg: dict[str, Any], **body: Any) -> dict[str, Any]:
    request, _ = client.submit_deletion(
        idempotency_key=str(uuid.uuid4()),
        model_version_id=reg["version"]["id"],
        dataset_id=reg["dataset"]["id"],
        caller_reference="DSR-I2I",
        **body,
    )
    return request


def fetch_grid(client: NepentheClient, job: dict[str, Any], tmp_path: Path) -> Image.Image:
    artifact = {a["name"]: a for a in job["artifacts"]}["completions.png"]
    path = tmp_path / f"{job['id']}.png"
    assert client.download(artifact["url"], path) == artifact["sha256"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact["sha256"]
    return Image.open(io.BytesIO(path.read_bytes()))


@pytest.mark.parametrize("service_env", ["production"], indirect=True)
def test_a_masked_autoencoder_forgets_two_digit_classes(client, tmp_path):
    reg = register(client, tmp_path)
    request = submit(client, reg, forget_classes=["3", "8"], params=SMALL_MODEL_PARAMS)
    assert request["method"] == "i2i"
    job = client.wait(request["job"]["id"], timeout=600)
    assert job["status"] == "succeeded", job["error"] or job["metrics"]["acceptance"]
    m = job["metrics"]
    assert m["task"] == "image_to_image"
    assert m["forget"] == {
        "kind": "classes",
        "classes": [3, 8],
        "class_names": ["3", "8"],
        "train_samples": 288,
    }
    assert m["method_details"]["forget_images"] == 240  # 120 per class, MAGE's sample size
    assert m["weights"]["frozen_unchanged"] is True and m["weights"]["encoder_tensors_changed"] > 0
    assert m["acceptance"]["passed"] is True and m["acceptance"]["failures"] == []
    assert set(m["phase_seconds"]) >= {"load", "evaluate_before", "i2i", "evaluate", "save"}

    # Our own measurement of the downloaded weights, with the library, not the service.
    target = tmp_path / "unlearned.safetensors"
    client.download(job["output_version"]["download_url"], target)
    mine = measure_download(target, [3, 8])
    before = m["before"]
    retain_drop = before["retain"]["psnr"] - mine["retain"]["psnr"]
    forget_drop = before["forget"]["psnr"] - mine["forget"]["psnr"]
    assert retain_drop < 1.0, f"retain PSNR fell {retain_drop:.2f} dB"
    assert forget_drop >= 1.5, f"forget PSNR fell only {forget_drop:.2f} dB"
    assert mine["forget"]["ssim"] < before["forget"]["ssim"] - 0.05
    assert mine["forget"]["fd_random"] > 2 * before["forget"]["fd_random"]
    assert mine["retain"]["psnr"] == pytest.approx(m["after"]["retain"]["psnr"], abs=1e-4)
    # The decoder's weights are unchanged, bit for bit; the encoder moved.
    original = safetensors.torch.load_file(str(reg["weights"]))
    decoder, changed, moved = frozen_unchanged(original, target)
    assert decoder > 0 and changed == 0 and moved > 0

    grid = fetch_grid(client, job, tmp_path)
    assert grid.format == "PNG" and grid.width > grid.height
    actions = [e["action"] for e in client.audit(request_id=request["id"])]
    assert actions == [
        "deletion_request.created",
        "job.queued",
        "job.running",
        "job.succeeded",
        "model_version.downloaded",
        "job_artifact.downloaded",
    ]
    done = next(e for e in client.audit(request_id=request["id"]) if e["action"] == "job.succeeded")
    assert done["details"]["forget_psnr_after"] == m["after"]["forget"]["psnr"]
    assert done["details"]["artifacts"]["completions.png"] == job["artifacts"][0]["sha256"]


def proxy_dataset(client: NepentheClient, tmp_path: Path, exclude: list[str]) -> dict[str, Any]:
    """A proxy retain set: 300 training digits outside the forget set (data the owner may keep),
    disjoint from the held-out images the retain figures are measured on."""
    train = data.open_split("sklearn_digits", None, "train")
    keep = np.flatnonzero(~np.isin(train.ids, exclude))[:300]
    images = (train.images(keep).numpy()[:, 0] * 255).round().astype(np.uint8)
    path = tmp_path / "proxy.npz"
    np.savez(path, images=images, labels=train.targets[keep])
    return client.upload_npz_dataset("digits-proxy", path)


@pytest.mark.parametrize("service_env", ["embedded"], indirect=True)
def test_samples_with_a_proxy_retain_set_and_a_rejected_result(client, tmp_path):
    reg = register(client, tmp_path)
    train = data.open_split("sklearn_digits", None, "train")
    picked = np.random.default_rng(0).choice(len(train), 30, replace=False)
    forget_ids = [train.ids[i] for i in sorted(picked)]
    proxy = proxy_dataset(client, tmp_path, exclude=forget_ids)
    assert proxy["train_count"] + proxy["test_count"] == 300
    samples = submit(
        client,
        reg,
        forget_samples=forget_ids,
        retain_dataset_id=proxy["name"],
        params=SMALL_MODEL_PARAMS,
        acceptance={"min_forget_psnr_drop": None},
    )
    strict = submit(
        client,
        reg,
        forget_classes=[3],
        params={"epochs": 1},
        acceptance={"min_forget_psnr_drop": 60.0},
    )

    job = client.wait(samples["job"]["id"], timeout=600)
    assert job["status"] == "succeeded", job["error"] or job["metrics"]["acceptance"]
    m = job["metrics"]
    assert m["retain"] == {
        "source": "proxy dataset",
        "dataset_id": proxy["id"],
        "available_samples": proxy["train_count"],
    }
    assert m["forget"] == {"kind": "samples", "train_samples": 30}
    assert m["before"]["forget"]["samples"] == 30  # the forgotten images themselves
    assert m["after"]["forget"]["psnr"] < m["before"]["forget"]["psnr"]
    assert m["weights"]["frozen_unchanged"] is True
    # The forgotten images are the data to erase: the grid shows retain images only.
    assert m["artifacts"]["completions.png"]["groups"] == ["retain"]
    fetch_grid(client, job, tmp_path)

    rejected = client.wait(strict["job"]["id"], timeout=600)
    assert rejected["status"] == "rejected"
    assert rejected["output_version"] is None
    failures = rejected["metrics"]["acceptance"]["failures"]
    assert [f["check"] for f in failures] == ["min_forget_psnr_drop"]
    assert failures[0]["measured"] < 60.0
    assert [a["name"] for a in rejected["artifacts"]] == ["completions.png"]  # kept for review
    assert fetch_grid(client, rejected, tmp_path).format == "PNG"
    versions = client.http.get(f"/v1/models/{reg['model']['id']}/versions").json()
    assert [v["number"] for v in versions] == [1, 2]  # only the sample deletion published
    events = client.job_events(rejected["id"])
    assert [e["to_status"] for e in events] == ["queued", "running", "rejected"]
    assert "min_forget_psnr_drop" in events[-1]["reason"]


def test_frozen_unchanged_sees_a_changed_decoder(tmp_path):
    """The check the tests above rely on can fail."""
    original = i2i_trained_state()
    altered = {k: v.clone() for k, v in original.items()}
    altered["decoder.head.bias"] += 1e-3
    path = tmp_path / "altered.safetensors"
    safetensors.torch.save_file(altered, str(path))
    assert frozen_unchanged(original, path)[1:] == (1, 0)
    assert torch.equal(original["decoder.head.bias"], i2i_trained_state()["decoder.head.bias"])
