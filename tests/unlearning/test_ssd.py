"""Selective Synaptic Dampening: the selection and scaling rule with known answers, BatchNorm
statistics re-estimated as a plain average, cached importances reused, and the job recipe's
accounting of its work."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers import SPEC, trained_model
from unlearning import data
from unlearning.methods import METHODS, UnlearningTask
from unlearning.methods.ssd import SsdConfig, dampen, reestimate_batchnorm, run_ssd


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
    assert cached.details["global_importance"] == "cached"
    # Every weight the forget set uses at all is far more important to it than "nothing".
    assert cached.details["dampened_weights"] > fresh.details["dampened_weights"]


def test_ssd_is_a_registered_method_that_accepts_classes_and_samples():
    method = METHODS["ssd"]
    assert method.forgets == {"classes", "samples"}
    assert {f.name for f in dataclasses.fields(method.config_type)} >= {"alpha", "dampening"}
    with pytest.raises(ValueError, match="alpha"):
        SsdConfig(alpha=0.0)
