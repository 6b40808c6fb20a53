"""timm classifiers by name (``timm:<model_name>``): built untrained with the registration's
classes and channels, bounded arguments, the same meta-device checks as every architecture, and
the class-deletion recipes run on them unchanged."""

from __future__ import annotations

import dataclasses
import socket
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from tests.helpers import CLASS_NAMES, SMALL_DATA_PARAMS
from tests.unlearning.test_job_recipes import Recorder
from unlearning import acceptance, architectures, checkpoints, data, timm_models
from unlearning.jobs import JobSpec, run
from unlearning.methods.distill import classifier_head
from unlearning.train import train_classifier

CPU = torch.device("cpu")
# timm's own smallest test network, at 16x16 (digits are upsampled from 8x8): trains in seconds.
TINY = "timm:test_resnet"
TINY_SHAPE = (1, 16, 16)
TINY_SPEC = data.InputSpec(TINY_SHAPE, (0.5,), (0.5,))


@lru_cache
def tiny_state() -> dict[str, torch.Tensor]:
    """timm:test_resnet trained on the digits train split; cached per process."""
    train = data.open_split("sklearn_digits", None, "train")
    torch.manual_seed(0)
    model = architectures.build_classifier(TINY, 10, {}, TINY_SHAPE)
    train_classifier(model, train, np.arange(len(train)), TINY_SPEC, epochs=5, lr=3e-3)
    return {k: v.clone() for k, v in model.state_dict().items()}


def on_meta(name: str, args: dict, shape: tuple[int, int, int], classes: int = 10) -> nn.Module:
    """What a registration checks: build on meta, bound the size, prove the input shape."""
    net = architectures.build_on_meta(name, classes, args, shape)
    architectures.check_size(net, 10**9)
    architectures.check_input_shape(net, shape, classes)
    return net


@pytest.mark.parametrize(
    ("name", "args", "shape"),
    [
        ("timm:resnet10t", {}, (1, 28, 28)),
        ("timm:resnet18", {"drop_rate": 0.2, "global_pool": "max"}, (3, 32, 32)),
        ("timm:convnext_atto", {"drop_path_rate": 0.1}, (3, 32, 32)),
        ("timm:vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4}, (3, 32, 32)),
        ("timm:vit_tiny_patch16_224", {"img_size": 28, "patch_size": 7}, (1, 28, 28)),
        ("timm:efficientnet_b0", {"drop_rate": 0.1}, (3, 32, 32)),
    ],
)
def test_timm_networks_build_on_meta_with_the_registrations_classes_and_channels(name, args, shape):
    net = on_meta(name, args, shape, classes=7)
    first = next(p for p in net.parameters() if p.dim() == 4)  # the stem's convolution
    assert first.shape[1] == shape[0]
    assert first.is_meta  # nothing was allocated
    assert classifier_head(net, 7).out_features == 7  # the head refit finds the logits layer


def test_a_timm_network_is_the_one_timm_builds():
    import timm

    ours = architectures.build_classifier("timm:resnet10t", 5, {"drop_rate": 0.1}, (1, 28, 28))
    theirs = timm.create_model("resnet10t", pretrained=False, num_classes=5, in_chans=1)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    assert ours.drop_rate == 0.1
    # Weights saved from the user's own timm network load as they are.
    assert checkpoints.fit_problems(ours, theirs.state_dict()) == []


def test_building_never_opens_a_connection(monkeypatch):
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a timm build tried to connect")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    on_meta("timm:vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4}, (3, 32, 32))
    net = architectures.build_classifier("timm:resnet10t", 3, {}, (3, 32, 32))
    assert net.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_without_an_input_shape_a_timm_network_takes_three_channels():
    net = architectures.build_on_meta("timm:resnet10t", 4)
    assert next(net.parameters()).shape[1] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"pretrained": True}, "'pretrained' of 'timm:resnet18' is not accepted: nothing is down"),
        ({"pretrained_cfg": {"url": "http://x"}}, "'pretrained_cfg' .* nothing is downloaded"),
        ({"pretrained_cfg_overlay": {}}, "'pretrained_cfg_overlay' .* nothing is downloaded"),
        ({"checkpoint_path": "/etc/passwd"}, "'checkpoint_path' .* read from disk"),
        ({"cache_dir": "/tmp"}, "'cache_dir' .* nothing is downloaded"),
        ({"features_only": True}, "'features_only' .* one logit per class"),
        ({"out_indices": [1, 2]}, "'out_indices' .* one logit per class"),
        ({"num_classes": 10}, "num_classes comes from the model's class names"),
        ({"in_chans": 1}, "in_chans comes from the model's input_shape"),
        ({"act_layer": "relu"}, "argument 'act_layer' is not accepted \\(accepted: attn_drop"),
        ({"drop_rate": 1.5}, "'drop_rate' of 'timm:resnet18' is 1.5: it must be a number at"),
        ({"drop_rate": True}, "'drop_rate' .* is True: it must be a number"),
        ({"img_size": 0}, "'img_size' .* at least 1 and at most 4096"),
        ({"img_size": 10**30}, "'img_size' .* at most 4096"),
        ({"patch_size": 2.5}, "'patch_size' .* must be an integer"),
        ({"global_pool": "sum"}, "'global_pool' .* is 'sum': it must be one of 'avg', 'max'"),
        ({"global_pool": 1}, "'global_pool' .* must be one of"),
        ({"img_size": 32}, "cannot build 'timm:resnet18' .* unexpected keyword argument 'img_"),
    ],
)
def test_timm_arguments_are_whitelisted_and_bounded(args, message):
    with pytest.raises(architectures.ArchitectureError, match=message):
        architectures.build_on_meta("timm:resnet18", 10, args, (3, 32, 32))


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("timm:resnet_18", "did you mean timm:resnet18"),
        ("timm:resnet18.a1_in1k", "drop the pretrained tag: timm:resnet18"),
        ("timm:hf-hub:timm/resnet18.a1_in1k", "registered as timm:<model_name>"),
        ("timm:", "registered as timm:<model_name>"),
    ],
)
def test_unknown_timm_names_say_where_the_names_are(name, hint):
    with pytest.raises(architectures.ArchitectureError) as caught:
        architectures.build_on_meta(name, 10, {}, (3, 32, 32))
    text = str(caught.value)
    assert text.startswith("unknown timm model")
    assert "timm.list_models()" in text and hint in text


def test_a_plain_unknown_name_points_at_the_timm_prefix():
    with pytest.raises(architectures.ArchitectureError, match="timm models are named timm:"):
        architectures.build_on_meta("resnet10t", 10)


def test_size_and_input_shape_are_checked_as_for_every_architecture():
    huge = architectures.build_on_meta(
        "timm:vit_tiny_patch16_224", 10, {"img_size": 4096, "patch_size": 1}, (3, 4096, 4096)
    )
    with pytest.raises(architectures.ArchitectureError, match="more than the 1,000,000,000"):
        architectures.check_size(huge, 10**9)
    fixed = architectures.build_on_meta("timm:vit_tiny_patch16_224", 10, {}, (3, 32, 32))
    with pytest.raises(architectures.ArchitectureError, match="take the argument img_size"):
        architectures.check_input_shape(fixed, (3, 32, 32), 10)
    small = architectures.build_on_meta("timm:convnext_atto", 10, {}, (3, 8, 8))
    with pytest.raises(architectures.ArchitectureError, match=r"input shape \[3, 8, 8\]"):
        architectures.check_input_shape(small, (3, 8, 8), 10)


def test_weights_of_another_timm_network_name_the_first_mismatched_tensor():
    net = architectures.build_on_meta("timm:resnet10t", 10, {}, (1, 28, 28))
    three_channels = architectures.build_classifier("timm:resnet10t", 10, {}, (3, 28, 28))
    problems = checkpoints.fit_problems(net, three_channels.state_dict())
    assert problems[0] == (
        "tensor 'conv1.0.weight' has shape [24, 3, 3, 3], the architecture needs [24, 1, 3, 3]"
    )
    eleven = architectures.build_classifier("timm:resnet10t", 11, {}, (1, 28, 28))
    assert checkpoints.fit_problems(net, eleven.state_dict()) == [
        "tensor 'fc.weight' has shape [11, 512], the architecture needs [10, 512]",
        "tensor 'fc.bias' has shape [11], the architecture needs [10]",
    ]


def test_the_summary_names_the_prefix_the_count_and_the_arguments():
    import timm

    summary = timm_models.summary()
    assert summary["prefix"] == "timm:"
    assert summary["count"] == len(timm.list_models()) > 1000
    assert summary["version"] == timm.__version__
    assert "timm.list_models()" in summary["names"]
    assert summary["args"] == sorted(timm_models.TIMM_ARGS)
    assert not set(summary["args"]) & set(timm_models.REFUSED)


def _weights(tmp_path: Path) -> Path:
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file(tiny_state(), path)
    return path


def _class_job(method: str, params: dict) -> JobSpec:
    return JobSpec(
        method=method,
        params=params,
        forget_classes=[3],
        forget_samples=None,
        acceptance=dataclasses.asdict(acceptance.DEFAULTS["classes"]),
        reference=None,
        measure_relearn_time=False,
        architecture=TINY,
        architecture_args={},
        class_names=CLASS_NAMES,
        input_spec=TINY_SPEC,
        dataset_kind="sklearn_digits",
        dataset_location=None,
    )


def test_a_class_deletion_runs_unchanged_on_a_timm_network(tmp_path):
    outcome = run(_class_job("auto", {}), _weights(tmp_path), CPU, Recorder())
    before, after = outcome.metrics["before"], outcome.metrics["after"]
    assert before["forget_accuracy"] > 0.9
    assert outcome.failures == [], outcome.failures
    assert outcome.state is not None
    assert after["forget_accuracy"] <= 0.05
    assert after["retain_accuracy"] >= before["retain_accuracy"] - 0.05
    # The unlearned weights load back into the registered timm network.
    net = architectures.build_on_meta(TINY, 10, {}, TINY_SHAPE)
    assert checkpoints.fit_problems(net, outcome.state) == []


def test_ssd_runs_on_a_timm_network_and_the_gate_reads_its_result(tmp_path):
    # Whether SSD's selection forgets on timm's test_resnet depends on the torch thread count
    # (one thread: the forget class stays; two: it goes): the job must run and the gate must
    # judge what it measured.
    params = {"importance_images": 300, "forget_images": 100, "bn_images": 300}
    outcome = run(_class_job("ssd", params), _weights(tmp_path), CPU, Recorder())
    after = outcome.metrics["after"]["forget_accuracy"]
    failed = {f["check"] for f in outcome.failures}
    assert ("max_forget_accuracy" in failed) == (after > 0.05)
    assert (outcome.state is None) == bool(outcome.failures)


def test_unsir_runs_on_a_timm_network_and_its_gate_judges_it(tmp_path):
    """UNSIR's impair step costs this small BatchNorm network a third or more of its retain
    accuracy at the parameters that suit tiny_cnn: the job forgets, and the gate refuses it for
    that alone. (Smaller noise and no extra repair keep it to seconds.)"""
    params = {**SMALL_DATA_PARAMS, "noise_batch": 64, "noise_repeats": 5}
    job = _class_job("unsir", {**params, "max_extra_repair_epochs": 0})
    outcome = run(job, _weights(tmp_path), CPU, Recorder())
    assert {"noise", "impair", "repair"} <= set(outcome.metrics["samples_processed"])
    assert outcome.metrics["after"]["forget_accuracy"] <= 0.05
    assert [f["check"] for f in outcome.failures] in ([], ["max_retain_drop"])
    assert (outcome.state is None) == bool(outcome.failures)


def test_salun_forgets_samples_of_a_timm_network(tmp_path):
    train = data.open_splits("sklearn_digits", None)[0]
    job = dataclasses.replace(
        _class_job("salun", {"epochs": 2, "seed": 0}),
        forget_classes=None,
        forget_samples=list(train.ids[:40]),
        acceptance=dataclasses.asdict(acceptance.DEFAULTS["samples"]),
    )
    outcome = run(job, _weights(tmp_path), CPU, Recorder())
    assert outcome.metrics["samples_processed"]["relabel"] > 0
    assert outcome.failures == [], outcome.failures
    assert outcome.state is not None
    assert any(not v.equal(outcome.state[k]) for k, v in tiny_state().items())
