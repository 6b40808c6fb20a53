"""Each method's cost estimate, made before it runs, against what it then spends on real data:
exact where the method's work is fixed, an upper bound where it may stop early or heal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import SPEC, trained_model
from unlearning import data
from unlearning.methods import METHODS, UnlearningTask, costs
from unlearning.methods.common import MethodResult

FAST = {
    "retrain": {"epochs": 1},
    "finetune": {"epochs": 1},
    "random_label": {"epochs": 1},
    "neggrad_plus": {"epochs": 1, "forget_batch_size": 32},
    "salun": {"epochs": 2, "stop_margin": None},
    "ssd": {"importance_images": 200, "forget_images": 50, "bn_images": 300},
    "unsir": {
        "noise_batch": 8,
        "noise_steps": 2,
        "noise_repeats": 2,
        "retain_per_class": 20,
        "max_extra_repair_epochs": 0,
    },
}


def _task() -> tuple[UnlearningTask, costs.Sizes]:
    train = data.open_split("sklearn_digits", None, "train")
    forget = np.isin(train.targets, [3, 8])
    retain_idx = np.flatnonzero(~forget)
    task = UnlearningTask(
        trained_model(),
        train,
        np.flatnonzero(forget),
        retain_idx,
        [3, 8],
        10,
        SPEC,
        fresh_model=trained_model,
    )
    by_class = np.bincount(train.targets[retain_idx])
    sizes = costs.Sizes(len(train), int(forget.sum()), tuple(int(n) for n in by_class if n), 2)
    return task, sizes


def spent(result: MethodResult) -> float:
    return sum(result.samples_processed.values()) + result.forward_samples / 3


@pytest.mark.parametrize("name", sorted(FAST))
def test_the_estimate_is_what_the_method_spends(name):
    torch.manual_seed(0)
    task, sizes = _task()
    method = METHODS[name]
    config = method.config_type(**FAST[name])
    estimate = method.estimate(config, sizes)
    result = method.run(task, config)
    if name == "neggrad_plus":  # the cycled forget set's last batch of a pass may be short
        assert spent(result) == pytest.approx(estimate, rel=0.02)
    else:
        assert spent(result) == pytest.approx(estimate)


def test_work_that_may_not_happen_is_estimated_at_its_most():
    _, sizes = _task()
    unsir = METHODS["unsir"].config_type(**{**FAST["unsir"], "max_extra_repair_epochs": 3})
    heal = 3 * 8 * 20  # three extra repair epochs over 20 images of each of the 8 retain classes
    assert METHODS["unsir"].estimate(unsir, sizes) == pytest.approx(
        METHODS["unsir"].estimate(METHODS["unsir"].config_type(**FAST["unsir"]), sizes) + heal
    )
    stopping = METHODS["salun"].config_type(epochs=10)
    assert METHODS["salun"].estimate(stopping, sizes) == sizes.forget + 10 * (
        sizes.forget + sizes.retain
    )
