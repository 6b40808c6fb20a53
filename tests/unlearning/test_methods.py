"""The reference methods and SalUn on real digits: what each reads, changes and achieves."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from tests.helpers import SPEC, assert_forgotten_toward_held_out, trained_model
from tests.unlearning.test_unsir import RecordingSource
from unlearning import architectures, data, verify
from unlearning.methods import METHODS, UnlearningTask
from unlearning.methods.reference import (
    FinetuneConfig,
    NegGradPlusConfig,
    RandomLabelConfig,
    RetrainConfig,
    other_labels,
)
from unlearning.methods.salun import SalunConfig, saliency_mask

CPU = torch.device("cpu")
FORGET = [3, 8]
NAMES = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def splits() -> tuple[data.ImageSource, data.ImageSource]:
    return data.open_splits("sklearn_digits", None)


def class_task(train: data.ImageSource, model: torch.nn.Module | None = None) -> UnlearningTask:
    is_forget = np.isin(train.targets, FORGET)
    return UnlearningTask(
        model or trained_model(),
        train,
        np.flatnonzero(is_forget),
        np.flatnonzero(~is_forget),
        FORGET,
        10,
        SPEC,
        fresh_model=lambda: architectures.build_classifier("tiny_cnn", 10, {"in_channels": 1}),
    )


def sample_task(train: data.ImageSource, count: int = 40) -> UnlearningTask:
    forget = np.sort(np.random.default_rng(0).choice(len(train), count, replace=False))
    retain = np.setdiff1d(np.arange(len(train)), forget)
    return UnlearningTask(trained_model(), train, forget, retain, None, 10, SPEC)


def measure(task: UnlearningTask, test: data.ImageSource) -> dict:
    sets = verify.eval_sets(
        task.source, test, task.forget_idx, task.retain_idx, task.forget_classes, NAMES
    )
    return verify.measure(task.model, sets, SPEC, CPU)


def test_retrain_reads_only_retain_data_and_never_predicts_the_forgotten_classes(splits):
    train, test = splits
    source = RecordingSource(train)
    task = class_task(train)
    task.source = source  # type: ignore[assignment]
    result = METHODS["retrain"].run(task, RetrainConfig(epochs=15, lr=3e-3, batch_size=64))
    assert not np.isin(train.targets[source.read], FORGET).any()
    assert result.samples_processed["retrain"] == 15 * len(task.retain_idx)
    task.source = train
    after = measure(task, test)
    assert after["accuracy"]["forget_train"] == 0.0 and after["forget_accuracy"] == 0.0
    assert after["retain_accuracy"] > 0.95


def test_finetune_reads_only_retain_data(splits):
    train, _ = splits
    source = RecordingSource(train)
    task = class_task(train)
    task.source = source  # type: ignore[assignment]
    before = copy.deepcopy(task.model)
    METHODS["finetune"].run(task, FinetuneConfig(epochs=1))
    assert source.read and not np.isin(train.targets[source.read], FORGET).any()
    assert verify.weight_distance(task.model, before)["total"] > 0


def test_neggrad_plus_pushes_the_forget_classes_down(splits):
    train, test = splits
    task = class_task(train)
    before = measure(task, test)
    METHODS["neggrad_plus"].run(task, NegGradPlusConfig(epochs=5, beta=0.9))
    after = measure(task, test)
    assert after["forget_accuracy"] < before["forget_accuracy"] - 0.3


def test_random_labels_are_never_the_true_label_and_cover_the_others():
    true = np.repeat(np.arange(10), 500)
    labels = other_labels(true, 10, np.random.default_rng(0))
    assert not (labels == true).any()
    assert set(labels[true == 3]) == set(range(10)) - {3}


def test_random_label_trains_on_forget_and_retain_data(splits):
    train, _ = splits
    source = RecordingSource(train)
    task = class_task(train)
    task.source = source  # type: ignore[assignment]
    result = METHODS["random_label"].run(task, RandomLabelConfig(epochs=1, lr=0.01))
    assert sorted(source.read) == list(range(len(train)))
    assert result.samples_processed["random_label"] == len(train)


def test_salun_mask_keeps_the_asked_share_and_only_masked_weights_move(splits):
    train, _ = splits
    task = sample_task(train)
    mask = saliency_mask(task.model, task, 0.5, 128)
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    assert kept == round(total / 2)

    original = copy.deepcopy(task.model)
    config = SalunConfig(epochs=3, weight_decay=0.0)  # decay would shrink every weight
    result = METHODS["salun"].run(task, config)
    assert result.details["masked_weight_share"] == pytest.approx(0.5, abs=0.01)
    after, before = dict(task.model.named_parameters()), dict(original.named_parameters())
    for name, m in mask.items():
        frozen = m == 0
        assert torch.equal(after[name][frozen], before[name][frozen]), name


def test_salun_moves_forgotten_samples_toward_held_out_membership(splits):
    train, test = splits
    task = sample_task(train)
    before = measure(task, test)
    METHODS["salun"].run(task, SalunConfig())
    after = measure(task, test)
    assert_forgotten_toward_held_out(before, after)


def test_salun_stops_once_the_forgotten_samples_look_unseen(splits):
    """Each epoch ends with the membership check the job hands over; the first gap within
    ``stop_margin`` ends the relabelling, and the check's forward passes are counted."""
    train, _ = splits
    gaps = iter([0.30, 0.12, 0.04, 0.0])
    checked: list[int] = []

    def member_gap(model: torch.nn.Module) -> tuple[float | None, int]:
        checked.append(1)
        return next(gaps), 50

    task = dataclasses.replace(sample_task(train), member_gap=member_gap)
    result = METHODS["salun"].run(task, SalunConfig(epochs=6))
    assert result.details["epochs_run"] == 3
    assert result.details["member_gap_by_epoch"] == [0.30, 0.12, 0.04]
    assert result.check_samples == 3 * 50 and result.forward_samples == 0
    assert result.samples_processed["relabel"] == 3 * len(train)

    # stop_margin null runs every epoch, as the paper does, and never asks.
    task = dataclasses.replace(sample_task(train), member_gap=member_gap)
    checked.clear()
    result = METHODS["salun"].run(task, SalunConfig(epochs=2, stop_margin=None))
    assert result.details["epochs_run"] == 2 and checked == []


def test_salun_keeps_batchnorm_statistics_unless_asked_to_train_them(splits):
    """Relabelling batches mix random-labelled forget images into retain data: by default their
    statistics must not replace the running ones (mobilenet_v3_small fell to chance that way)."""
    train, _ = splits
    task = sample_task(train)
    stats = {k: v.clone() for k, v in task.model.state_dict().items() if "running" in k}
    assert stats, "tiny_cnn has BatchNorm layers"
    METHODS["salun"].run(task, SalunConfig(epochs=1, stop_margin=None))
    after = task.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in stats.items())

    task = sample_task(train)
    METHODS["salun"].run(task, SalunConfig(epochs=1, stop_margin=None, batchnorm="train"))
    after = task.model.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in stats.items())


def test_methods_refuse_out_of_range_parameters():
    for config, bad in (
        (FinetuneConfig, {"lr": float("nan")}),
        (NegGradPlusConfig, {"beta": 1.5}),
        (SalunConfig, {"mask_ratio": 0.0}),
        (RetrainConfig, {"epochs": 0}),
        (SalunConfig, {"retain_per_class": 0}),
        (RandomLabelConfig, {"batch_size": 0}),
    ):
        with pytest.raises(ValueError, match="must be"):
            config(**bad)


def test_unsir_refuses_a_sample_request(splits):
    train, _ = splits
    with pytest.raises(ValueError, match="whole classes"):
        METHODS["unsir"].run(sample_task(train), METHODS["unsir"].config_type())
