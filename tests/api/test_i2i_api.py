"""Image-to-image models through the API without a worker: registration with a declared encoder
and transform, checkpoint checks, deletion requests with their defaults, and every refusal a
client can run into, on both databases, leaving nothing behind."""

from __future__ import annotations

import io
import uuid
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

from client.demo_i2i import ARCH_ARGS, ARCH_NAME, SPEC, model_body
from tests.api.conftest import BACKENDS, snapshot
from tests.api.test_bad_input import assert_problem
from unlearning import data
from unlearning.i2i import architectures

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)


def weights(name: str = ARCH_NAME, args: dict[str, Any] | None = None) -> bytes:
    torch.manual_seed(0)
    net = architectures.build(name, SPEC.shape, ARCH_ARGS if args is None else args)
    return safetensors.torch.save(net.state_dict())


@pytest.fixture
def i2i(api) -> dict[str, Any]:
    model = api.post("/v1/models", json=model_body("digits-mae")).json()
    files = {"file": ("m.safetensors", weights(), "application/octet-stream")}
    version = api.post(f"/v1/models/{model['id']}/versions", files=files).json()
    dataset = api.post("/v1/datasets", json={"name": "digits", "kind": "sklearn_digits"}).json()
    return {"model": model, "version": version, "dataset": dataset}


def submit(api, reg: dict[str, Any], **extra: Any):
    body = {
        "model_version_id": reg["version"]["id"],
        "dataset_id": "digits",
        "forget_classes": ["3", 8],
        **extra,
    }
    return api.post(
        "/v1/deletion-requests", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}
    )


def test_an_image_to_image_model_records_its_encoder_and_transform(api, i2i):
    model = i2i["model"]
    assert model["task"] == "image_to_image"
    assert model["class_names"] == []
    assert model["encoder"] == ["encoder."]
    assert model["transform"] == {"kind": "center_square", "size": 0.5, "cell": 4}
    assert i2i["version"]["number"] == 1
    listed = api.get("/v1/architectures").json()
    assert listed["image_to_image"] == ["mae_vit", "unet_inpainter"]
    unet = {
        **model_body("digits-unet"),
        "architecture": {"name": "unet_inpainter", "args": {}},
        "encoder": ["encoder.middle.", "encoder.input_blocks.1."],
        "transform": {"kind": "outpaint", "size": 0.25},
    }
    created = api.post("/v1/models", json=unet)
    assert created.status_code == 201, created.text
    assert created.json()["encoder"] == ["encoder.middle.", "encoder.input_blocks.1."]
    events = [e["action"] for e in api.get("/v1/audit/events").json()["items"]]
    assert events.count("model.registered") == 2


def test_a_deletion_request_defaults_to_i2i_with_the_recipe_of_the_network(api, i2i):
    response = submit(api, i2i, params={"lr": 1e-3}, caller_reference="DSR-I2I-1")
    assert response.status_code == 202, response.text
    request = response.json()
    assert request["method"] == "i2i"
    assert request["forget_class_names"] == ["3", "8"]  # the dataset's class names
    params = request["params"]
    # MAGE's recipe for a small ViT (the demo's trains 60 k encoder parameters), every value
    # recorded; lr as asked.
    assert (
        params["recipe"],
        params["alpha"],
        params["optimizer"],
        params["epochs"],
        params["warmup_epochs"],
        params["grad_clip"],
        params["lr"],
        params["retain_ratio"],
    ) == ("mage_small", 0.3, "adamw", 10, 1.0, 3.0, 1e-3, 2.0)
    assert request["acceptance"] == {"max_retain_psnr_drop": 1.0, "min_forget_psnr_drop": 1.5}
    shorter = submit(api, i2i, params={"epochs": 3}).json()["params"]
    assert shorter["epochs"] == 3
    assert shorter["warmup_epochs"] == pytest.approx(0.3)  # the recipe's share of warm-up
    assert request["retain_dataset_id"] is None
    job = api.get(response.headers["Location"]).json()
    assert job["status"] == "queued" and job["artifacts"] == []
    assert api.get(f"/v1/jobs/{job['id']}/artifacts").json() == []
    missing = api.get(f"/v1/jobs/{job['id']}/artifacts/completions.png")
    assert_problem(missing, 404, "artifact_not_found")
    assert_problem(api.get("/v1/jobs/nope/artifacts"), 404, "job_not_found")


def test_samples_and_a_proxy_retain_set(api, i2i):
    rng = np.random.default_rng(0)
    archive = io.BytesIO()
    np.savez(
        archive,
        images=rng.integers(0, 255, (40, 8, 8), dtype=np.uint8),
        labels=rng.integers(0, 10, 40),
    )
    files = {"file": ("proxy.npz", archive.getvalue(), "application/octet-stream")}
    proxy = api.post("/v1/datasets/npz", files=files, data={"name": "proxy"}).json()
    train_ids = data.open_split("sklearn_digits", None, "train").ids[:5]
    response = submit(
        api,
        i2i,
        forget_classes=None,
        forget_samples=train_ids,
        retain_dataset_id="proxy",
        acceptance={"min_forget_psnr_drop": 3.0},
    )
    assert response.status_code == 202, response.text
    request = response.json()
    assert request["method"] == "i2i"
    assert request["retain_dataset_id"] == proxy["id"]
    assert request["forget_samples_count"] == 5
    assert request["acceptance"]["min_forget_psnr_drop"] == 3.0


def test_refusals_leave_nothing_behind(api, i2i, registered, store):
    before = snapshot(store)
    for body, status, code in (
        ({"method": "unsir"}, 422, "method_unsupported_for_model"),
        ({"reference": {"params": {}}}, 422, "option_unsupported_for_model"),
        ({"measure_relearn_time": True}, 422, "option_unsupported_for_model"),
        ({"acceptance": {"max_forget_accuracy": 0.1}}, 422, "invalid_acceptance"),
        ({"acceptance": {"max_retain_psnr_drop": -1}}, 422, "validation_error"),
        ({"params": {"recipe": "stable_diffusion"}}, 422, "invalid_method_params"),
        ({"params": {"lr": 0}}, 422, "invalid_method_params"),
        ({"params": {"noise_steps": 3}}, 422, "invalid_method_params"),
        ({"forget_classes": ["ten"]}, 422, "unknown_class"),
        ({"forget_classes": list(range(10))}, 422, "invalid_forget_set"),
        ({"retain_dataset_id": "nope"}, 404, "dataset_not_found"),
        ({"retain_dataset_id": "digits"}, 422, "invalid_retain_set"),  # holds the forget set
    ):
        assert_problem(submit(api, i2i, **body), status, code)
    # And the other way round: classifier requests refuse the I2I method and options.
    assert_problem(submit(api, registered, method="i2i"), 422, "method_unsupported_for_model")
    assert_problem(
        submit(api, registered, retain_dataset_id="digits"), 422, "option_unsupported_for_model"
    )
    assert_problem(
        submit(api, registered, acceptance={"min_forget_psnr_drop": 2}), 422, "invalid_acceptance"
    )
    # Checkpoints must fit the network: a U-Net's weights for the ViT, NaN weights.
    unet = {"file": ("u.safetensors", weights("unet_inpainter", {}), "application/octet-stream")}
    url = f"/v1/models/{i2i['model']['id']}/versions"
    assert_problem(api.post(url, files=unet), 422, "checkpoint_mismatch")
    state = safetensors.torch.load(weights())
    state["decoder.head.weight"] = torch.full_like(state["decoder.head.weight"], float("nan"))
    nan = {"file": ("n.safetensors", safetensors.torch.save(state), "application/octet-stream")}
    assert_problem(api.post(url, files=nan), 422, "checkpoint_mismatch")
    assert snapshot(store) == before


def library_body(saved: Any, config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "name": f"lib-{saved.folder.name}",
        "task": "image_to_image",
        "architecture": {"name": saved.name, "args": {"config": config or saved.config}},
        "input_shape": [1, 28, 28],
        "normalization": {"mean": [0.5], "std": [0.5]},
        **extra,
    }


def test_library_checkpoints_register_from_config_json_and_refuse_what_does_not_fit(
    api, store, tmp_path
):
    from tests.i2i_libraries import save_mae, save_unet

    listed = api.get("/v1/architectures").json()
    assert "transformers:ViTMAEForPreTraining" in listed["image_to_image_libraries"]
    mae, unet = save_mae(tmp_path / "mae"), save_unet(tmp_path / "unet")
    before = snapshot(store)
    for body, code, detail in (
        (
            library_body(mae, {**mae.config, "hidden_size": "wide"}),
            "invalid_architecture",
            "hidden_size",
        ),
        (
            library_body(mae, {**mae.config, "auto_map": {"x": "y"}}),
            "invalid_architecture",
            "remote code",
        ),
        (library_body(unet, {**unet.config, "bogus_key": 1}), "invalid_architecture", "bogus_key"),
        (library_body(unet, encoder=["up_blocks."]), "invalid_architecture", "decoder parameters"),
        (library_body(mae, input_shape=[1, 32, 32]), "invalid_architecture", "image_size"),
        (library_body(unet, {**unet.config, "sample_size": "ab"}), "invalid_architecture", "size"),
        (
            library_body(mae, {**mae.config, "attn_implementation": "kernels-community/x"}),
            "invalid_architecture",
            "attn_implementation",
        ),
    ):
        problem = assert_problem(api.post("/v1/models", json=body), 422, code)
        assert detail in problem["detail"], problem["detail"]
    assert snapshot(store) == before

    model = api.post("/v1/models", json=library_body(mae)).json()
    assert model["encoder"] == ["vit."]
    url = f"/v1/models/{model['id']}/versions"
    state = safetensors.torch.load(mae.weights.read_bytes())
    key = "vit.encoder.layer.0.attention.attention.query.weight"  # the file's name for it
    state[key] = torch.zeros(3, 3)
    files = {"file": ("m.safetensors", safetensors.torch.save(state), "application/octet-stream")}
    problem = assert_problem(api.post(url, files=files), 422, "checkpoint_mismatch")
    assert f"tensor {key!r} has shape [3, 3]" in problem["detail"]
    files = {"file": ("m.safetensors", mae.weights.read_bytes(), "application/octet-stream")}
    assert api.post(url, files=files).status_code == 201
