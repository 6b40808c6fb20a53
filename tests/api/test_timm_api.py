"""A timm classifier through the API: registered as ``timm:<model_name>``, its weights uploaded as
a timm user saves them (``safetensors.torch.save_file(model.state_dict())``), refused with a 422
naming the first tensor that does not fit, and one class deletion run by the worker's task."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import timm
import torch

from tests.api.conftest import BACKENDS, snapshot
from tests.api.test_bad_input import assert_problem, upload
from tests.helpers import CLASS_NAMES
from unlearning import checkpoints, data
from unlearning.train import train_classifier
from workers.tasks import run_job

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)

NAME = "test_resnet"  # timm's own smallest test network
SHAPE = [3, 16, 16]  # digits are 8x8 grey: the service upsamples them and repeats the channel
SPEC = data.InputSpec((3, 16, 16), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def body(architecture: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": "digits-timm",
        "architecture": architecture or {"name": f"timm:{NAME}", "args": {"drop_rate": 0.1}},
        "input_shape": SHAPE,
        "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "class_names": CLASS_NAMES,
    }


@lru_cache
def trained_file(directory: str) -> Path:
    """What a timm user uploads: the network built by timm itself, trained on digits, saved
    with safetensors.torch.save_file. Trained once per process."""
    train = data.open_split("sklearn_digits", None, "train")
    torch.manual_seed(0)
    model = timm.create_model(NAME, pretrained=False, num_classes=10, in_chans=3, drop_rate=0.1)
    train_classifier(model, train, np.arange(len(train)), SPEC, epochs=10, lr=3e-3)
    path = Path(directory) / "timm-digits.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(path))
    return path


@pytest.fixture
def weights(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return trained_file(str(tmp_path_factory.getbasetemp())).read_bytes()


def test_the_listing_says_timm_models_are_accepted(api):
    listed = api.get("/v1/architectures").json()
    assert listed["timm"]["prefix"] == "timm:"
    assert listed["timm"]["count"] == len(timm.list_models())
    assert listed["timm"]["version"] == timm.__version__
    assert "timm.list_models()" in listed["timm"]["names"]
    assert {"drop_rate", "img_size", "global_pool"} <= set(listed["timm"]["args"])
    assert "resnet18" in listed["torchvision"]  # the other listings are as they were


def test_a_timm_model_registers_and_takes_timm_weights(api, weights):
    response = api.post("/v1/models", json=body())
    assert response.status_code == 201, response.text
    model = response.json()
    assert model["architecture"] == f"timm:{NAME}"
    assert model["architecture_args"] == {"drop_rate": 0.1}
    version = upload(api, model["id"], weights)
    assert version.status_code == 201, version.text
    stored = checkpoints.state_from_bytes(api.get(version.json()["download_url"]).content)
    assert stored.keys() == safetensors.torch.load(weights).keys()


def test_weights_that_do_not_fit_name_the_first_mismatched_tensor(api, store):
    model = api.post("/v1/models", json=body()).json()
    eleven = timm.create_model(NAME, pretrained=False, num_classes=11, in_chans=3)
    before = snapshot(store)
    problem = assert_problem(
        upload(api, model["id"], safetensors.torch.save(eleven.state_dict())),
        422,
        "checkpoint_mismatch",
    )
    assert problem["problems"][0] == (
        "tensor 'fc.weight' has shape [11, 96], the architecture needs [10, 96]"
    )
    assert "tensor 'fc.weight'" in problem["detail"]
    grey = timm.create_model(NAME, pretrained=False, num_classes=10, in_chans=1)
    problem = assert_problem(
        upload(api, model["id"], safetensors.torch.save(grey.state_dict())),
        422,
        "checkpoint_mismatch",
    )
    assert problem["problems"][0] == (
        "tensor 'conv1.0.weight' has shape [16, 1, 3, 3], the architecture needs [16, 3, 3, 3]"
    )
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("architecture", "detail"),
    [
        ({"name": "timm:no_such_net"}, "unknown timm model 'no_such_net': the names are those of "),
        ({"name": "timm:resnet18.a1_in1k"}, "drop the pretrained tag: timm:resnet18"),
        ({"name": f"timm:{NAME}", "args": {"pretrained": True}}, "nothing is downloaded"),
        ({"name": f"timm:{NAME}", "args": {"checkpoint_path": "/etc/passwd"}}, "read from disk"),
        ({"name": f"timm:{NAME}", "args": {"features_only": True}}, "one logit per class"),
        ({"name": f"timm:{NAME}", "args": {"num_classes": 10}}, "num_classes comes from"),
        ({"name": f"timm:{NAME}", "args": {"in_chans": 3}}, "in_chans comes from"),
        ({"name": f"timm:{NAME}", "args": {"drop_rate": 2}}, "'drop_rate' of 'timm:test_res"),
        ({"name": f"timm:{NAME}", "args": {"global_pool": "sum"}}, "must be one of 'avg'"),
        ({"name": "timm:vit_tiny_patch16_224"}, "take the argument img_size"),
        (
            {"name": "timm:vit_tiny_patch16_224", "args": {"img_size": 4096, "patch_size": 1}},
            "parameters and buffers, more than",
        ),
    ],
)
def test_unusable_timm_registrations_are_422_and_leave_nothing(api, store, architecture, detail):
    before = snapshot(store)
    problem = assert_problem(
        api.post("/v1/models", json=body(architecture)), 422, "invalid_architecture"
    )
    assert detail in problem["detail"]
    assert snapshot(store) == before


def test_a_class_deletion_runs_on_a_timm_model(api, weights):
    model = api.post("/v1/models", json=body()).json()
    version = upload(api, model["id"], weights).json()
    dataset = api.post("/v1/datasets", json={"name": "digits", "kind": "sklearn_digits"}).json()
    request = {
        "model_version_id": version["id"],
        "dataset_id": dataset["id"],
        "forget_classes": [3],
    }
    submitted = api.post("/v1/deletion-requests", json=request)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job"]["id"]

    assert run_job(job_id) == "succeeded"  # the worker's task, in this process

    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job["error"]
    metrics = job["metrics"]
    assert metrics["before"]["forget_accuracy"] > 0.9
    assert metrics["after"]["forget_accuracy"] <= 0.05
    assert metrics["after"]["retain_accuracy"] >= metrics["before"]["retain_accuracy"] - 0.05
    out = job["output_version"]
    assert out["parent_version_id"] == version["id"]
    unlearned = checkpoints.state_from_bytes(api.get(out["download_url"]).content)
    net = timm.create_model(NAME, pretrained=False, num_classes=10, in_chans=3, drop_rate=0.1)
    net.load_state_dict(unlearned)  # a timm user loads it back as they saved it
    net.eval()
    test = data.open_split("sklearn_digits", None, "test")
    threes = np.flatnonzero(test.targets == 3)
    with torch.no_grad():
        predicted = net(SPEC.prepare(test.images(threes))).argmax(1)
    assert (predicted == 3).float().mean().item() <= 0.05


def test_a_grey_scale_timm_model_takes_one_channel_weights(api):
    grey = {**body(), "name": "digits-timm-grey", "input_shape": [1, 16, 16]}
    grey["normalization"] = {"mean": [0.5], "std": [0.5]}
    response = api.post("/v1/models", json=grey)
    assert response.status_code == 201, response.text
    net = timm.create_model(NAME, pretrained=False, num_classes=10, in_chans=1)
    version = upload(api, response.json()["id"], checkpoints.canonical_bytes(net.state_dict()))
    assert version.status_code == 201, version.text
    three = timm.create_model(NAME, pretrained=False, num_classes=10, in_chans=3)
    refused = upload(api, response.json()["id"], checkpoints.canonical_bytes(three.state_dict()))
    assert refused.status_code == 422
    assert "conv1" in refused.json()["detail"]
