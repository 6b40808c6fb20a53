"""Selective Synaptic Dampening: the selection and scaling rule with known answers, BatchNorm
statistics re-estimated as a plain average, cached importances reused, and the job recipe's
accounting of its work."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers import SPEC, trained_model
from unlearning import data
from unlearning.methods import METHODS, UnlearningTask
from unlearning.methods.ssd import (
    SsdConfig,
    dampen,
    load_cached,
    reestimate_batchnorm,
    run_ssd,
    save_cached,
)


def test_only_weights_far_more_important_to_the_forget_set_are_scaled_down():
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    global_imp = {"weight": torch.tensor([[1.0, 1.0], [1.0, 1.0]])}
    forget_imp = {"weight": torch.tensor([[20.0, 5.0], [40.0, 10.0]])}
    changed = dampen(layer, global_imp, forget_imp, SsdConfig(alpha=10.0, dampening=1.0))
    # 20 and 40 exceed 10 x 1: scaled by 1/20 and 1/40; 5 and 10 do not (10 is not > 10).
    assert changed == {"weight": 2}
    assert torch.allclose(layer.weight, torch.tensor([[0.05, 2.0], [0.075, 4.0]]))


def test_the_scale_never_exceeds_one():
    layer = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(2.0)
    dampen(
        layer,
        {"weight": torch.ones(1, 1)},
        {"weight": torch.full((1, 1), 0.5)},
        SsdConfig(alpha=0.1, dampening=100.0),
    )
    assert float(layer.weight.detach()) == 2.0


def test_batchnorm_statistics_become_the_plain_average_of_the_images_seen():
    net = nn.Sequential(nn.BatchNorm2d(1))
    batches = [torch.full((4, 1, 2, 2), 1.0), torch.full((4, 1, 2, 2), 3.0)]
    assert reestimate_batchnorm(net, iter(batches), torch.device("cpu")) == 8
    norm = net[0]
    assert float(norm.running_mean) == pytest.approx(2.0)
    assert norm.momentum == 0.1 and not net.training  # restored, left in eval mode


def _task(model: nn.Module) -> UnlearningTask:
    train = data.open_split("sklearn_digits", None, "train")
    forget = np.isin(train.targets, [3])
    return UnlearningTask(
        model, train, np.flatnonzero(forget), np.flatnonzero(~forget), [3], 10, SPEC
    )


def test_cached_global_importances_are_used_instead_of_computed():
    config = SsdConfig(alpha=5.0, importance_images=300, forget_images=100, bn_images=200)
    fresh = run_ssd(_task(trained_model()), config)
    assert fresh.samples_processed == {"importance": 300, "forget_importance": 100}
    assert fresh.details["global_importance"] == "computed"
    assert fresh.forward_samples == 200  # tiny_cnn has BatchNorm: its statistics re-estimated

    model = trained_model()
    zeros = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    cached = run_ssd(_task(model), config, cached=zeros)
    assert "importance" not in cached.samples_processed
    assert cached.details["global_importance"] == "given"
    # Every weight the forget set uses at all is far more important to it than "nothing".
    assert cached.details["dampened_weights"] > fresh.details["dampened_weights"]


def test_ssd_is_a_registered_method_that_accepts_classes_and_samples():
    method = METHODS["ssd"]
    assert method.forgets == {"classes", "samples"}
    assert {f.name for f in dataclasses.fields(method.config_type)} >= {"alpha", "dampening"}
    with pytest.raises(ValueError, match="alpha"):
        SsdConfig(alpha=0.0)


def test_importances_are_computed_once_per_model_version_and_reused(tmp_path):
    config = SsdConfig(alpha=5.0, importance_images=300, forget_images=100, bn_images=0)
    version_1 = tmp_path / "version-1" / "digits"
    first = run_ssd(dataclasses.replace(_task(trained_model()), importance_cache=version_1), config)
    assert first.details["global_importance"] == "computed"
    assert first.samples_processed["importance"] == 300
    again = run_ssd(dataclasses.replace(_task(trained_model()), importance_cache=version_1), config)
    assert again.details["global_importance"] == "cached"
    assert "importance" not in again.samples_processed
    assert again.details["dampened_weights"] == first.details["dampened_weights"]

    # A new version is other weights: nothing of version 1 applies to it.
    version_2 = tmp_path / "version-2" / "digits"
    other = run_ssd(dataclasses.replace(_task(trained_model()), importance_cache=version_2), config)
    assert other.details["global_importance"] == "computed"
    # Another importance sample is another estimate: computed, not reused.
    bigger = dataclasses.replace(config, importance_images=400)
    resized = run_ssd(
        dataclasses.replace(_task(trained_model()), importance_cache=version_1), bigger
    )
    assert resized.details["global_importance"] == "computed"


def test_an_unreadable_cache_file_is_computed_again(tmp_path):
    config = SsdConfig(importance_images=200, forget_images=50, bn_images=0)
    folder = tmp_path / "v" / "digits"
    run_ssd(dataclasses.replace(_task(trained_model()), importance_cache=folder), config)
    for kept in folder.glob("*.safetensors"):
        kept.write_bytes(b"not a tensor file")
    redo = run_ssd(dataclasses.replace(_task(trained_model()), importance_cache=folder), config)
    assert redo.details["global_importance"] == "computed"


def test_the_cache_keeps_only_the_most_recently_used_versions(tmp_path):
    imp = {"w": torch.ones(2)}
    for n in range(4):
        save_cached(tmp_path / f"v{n}" / "d", "k", imp, keep=2)
        os.utime(tmp_path / f"v{n}", (1_000 + n, 1_000 + n))
    # Saving v3 dropped v0 and v1, the least recently used.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v2", "v3"]
    assert load_cached(tmp_path / "v1" / "d", "k") is None
    assert torch.equal(load_cached(tmp_path / "v3" / "d", "k")["w"], imp["w"])
