"""UNSIR on real digits with a real trained network, CPU only."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.helpers import SMALL_DATA_PARAMS, SPEC, trained_model
from unlearning import data
from unlearning.evaluate import accuracy_report, count_correct
from unlearning.methods.unsir import (
    RetainSubset,
    UnsirConfig,
    UnsirResult,
    learn_noise,
    noise_dataset,
    unsir,
)

FORGET = [3, 8]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def splits() -> tuple[data.ArrayImages, data.ArrayImages]:
    train = data.open_split("sklearn_digits", None, "train")
    test = data.open_split("sklearn_digits", None, "test")
    assert isinstance(train, data.ArrayImages)
    assert isinstance(test, data.ArrayImages)
    return train, test


def retain_subset(train: data.ImageSource, per_class: int = 1000) -> RetainSubset:
    retain = [c for c in range(10) if c not in FORGET]
    return RetainSubset(train, data.sample_per_class(train.targets, retain, per_class, seed=0))


def evaluate(model: torch.nn.Module, test: data.ImageSource) -> dict[str, object]:
    counts = count_correct(model, test, np.arange(len(test)), SPEC, 10, CPU)
    return accuracy_report(counts, FORGET, [str(i) for i in range(10)])


class RecordingSource:
    """Wraps a source and records every sample index whose image is read."""

    def __init__(self, inner: data.ArrayImages) -> None:
        self.inner = inner
        self.ids, self.targets, self.classes = inner.ids, inner.targets, inner.classes
        self.read: list[int] = []

    def __len__(self) -> int:
        return len(self.inner)

    def images(self, idx: np.ndarray) -> torch.Tensor:
        self.read.extend(int(i) for i in idx)
        return self.inner.images(idx)


def test_forgets_the_classes_and_keeps_the_rest(splits):
    train, test = splits
    model = trained_model()
    before = evaluate(model, test)
    unsir(model, FORGET, retain_subset(train), SPEC, UnsirConfig(**SMALL_DATA_PARAMS))
    after = evaluate(model, test)
    assert before["forget_accuracy"] > 0.9
    assert after["forget_accuracy"] <= 0.05
    assert after["retain_accuracy"] >= before["retain_accuracy"] - 0.05


def test_never_reads_a_forget_class_image(splits):
    train, _ = splits
    source = RecordingSource(train)
    subset = retain_subset(train)
    unsir(
        trained_model(),
        FORGET,
        RetainSubset(source, subset.indices),
        SPEC,
        UnsirConfig(**SMALL_DATA_PARAMS),
    )
    assert source.read, "the retain subset should have been read"
    assert not np.isin(train.targets[source.read], FORGET).any()


def test_refuses_a_retain_subset_holding_forget_samples(splits):
    train, _ = splits
    leaky = RetainSubset(train, np.arange(len(train)))
    with pytest.raises(ValueError, match="forget-class samples"):
        unsir(trained_model(), FORGET, leaky, SPEC, UnsirConfig())


def test_same_seed_gives_identical_weights(splits):
    train, _ = splits
    config = UnsirConfig(**{**SMALL_DATA_PARAMS, "noise_steps": 10, "noise_repeats": 4})
    first, second = trained_model(), trained_model()
    unsir(first, FORGET, retain_subset(train), SPEC, config)
    unsir(second, FORGET, retain_subset(train), SPEC, config)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key


def test_another_seed_gives_other_weights(splits):
    train, _ = splits
    base = {**SMALL_DATA_PARAMS, "noise_steps": 10, "noise_repeats": 4}
    first, second = trained_model(), trained_model()
    unsir(first, FORGET, retain_subset(train), SPEC, UnsirConfig(**{**base, "seed": 1}))
    unsir(second, FORGET, retain_subset(train), SPEC, UnsirConfig(**{**base, "seed": 2}))
    assert not torch.equal(first.fc.weight, second.fc.weight)


def test_noise_is_labelled_with_its_own_class():
    noise = {3: torch.zeros(4, 1, 8, 8), 8: torch.ones(4, 1, 8, 8)}
    x, y = noise_dataset(noise, UnsirConfig(noise_repeats=5))
    assert x.shape == (40, 1, 8, 8)
    assert y[x.flatten(1).mean(1) == 0].unique().tolist() == [3]
    assert y[x.flatten(1).mean(1) == 1].unique().tolist() == [8]


def test_label_fix_off_reproduces_the_notebook_labels():
    noise = {3: torch.zeros(4, 1, 8, 8), 8: torch.ones(4, 1, 8, 8)}
    _, y = noise_dataset(noise, UnsirConfig(noise_repeats=2, label_fix=False))
    assert y.unique().tolist() == [0]


def batchnorm_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n, b in model.named_buffers() if "running" in n]


@pytest.mark.parametrize(("mode", "changes"), [("eval", False), ("train", True)])
def test_noise_learning_touches_batchnorm_only_in_train_mode(mode, changes):
    model = trained_model()
    before = batchnorm_buffers(model)
    weights = copy.deepcopy(model.state_dict())
    config = UnsirConfig(noise_steps=5, noise_batch=32, noise_bn_mode=mode)
    noise = learn_noise(model, [3], SPEC, config, CPU, lambda *_: None, UnsirResult())
    after = batchnorm_buffers(model)
    moved = any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert moved is changes
    assert noise[3].shape == (32, 1, 8, 8)
    for key, value in model.state_dict().items():  # learnable weights never change here
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(value, weights[key]), key


def test_noise_maximises_the_forget_class_loss():
    model = trained_model().eval()
    config = UnsirConfig(noise_steps=40, noise_batch=64)
    noise = learn_noise(model, [3], SPEC, config, CPU, lambda *_: None, UnsirResult())
    target = torch.full((64,), 3)
    random = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        learned_loss = torch.nn.functional.cross_entropy(model(noise[3]), target)
        random_loss = torch.nn.functional.cross_entropy(model(random), target)
    assert learned_loss > random_loss


def test_reports_progress_for_every_phase(splits):
    train, _ = splits
    seen: dict[str, float] = {}
    config = UnsirConfig(**{**SMALL_DATA_PARAMS, "noise_steps": 4, "noise_repeats": 2})
    result = unsir(
        trained_model(),
        FORGET,
        retain_subset(train, 50),
        SPEC,
        config,
        progress=lambda phase, f: seen.__setitem__(phase, f),
    )
    assert seen == {"noise": 1.0, "impair": 1.0, "repair": 1.0}
    assert set(result.phase_seconds) == {"noise", "impair", "repair"}
    assert result.samples_processed["repair"] == 3 * 50 * 8


@pytest.mark.parametrize(
    "bad", [{"noise_steps": 0}, {"impair_lr": 0.0}, {"noise_bn_mode": "frozen"}, {"noise_l2": -1}]
)
def test_rejects_bad_parameters(bad):
    with pytest.raises(ValueError):  # noqa: PT011 - the message names the parameter
        UnsirConfig(**bad)


@pytest.mark.parametrize(("mode", "changes"), [("frozen", False), ("train", True)])
def test_impair_and_repair_keep_batchnorm_statistics_unless_asked_not_to(splits, mode, changes):
    train, _ = splits
    model = trained_model()
    before = batchnorm_buffers(model)
    config = UnsirConfig(noise_steps=2, noise_batch=16, noise_repeats=2, batchnorm=mode)
    unsir(model, FORGET, retain_subset(train, 30), SPEC, config)
    moved = any(
        not torch.equal(a, b) for a, b in zip(before, batchnorm_buffers(model), strict=True)
    )
    assert moved is changes


def test_the_impair_set_holds_no_more_noise_per_class_than_the_data_has_images(splits):
    train, _ = splits
    mean_class = len(train) / 10  # digits: about 143 images per class
    capped = UnsirConfig()  # 256 x 20 noise images per class in the notebook
    assert capped.noise_per_class(mean_class) == int(mean_class)
    assert UnsirConfig(size_to_data=False).noise_per_class(mean_class) == 256 * 20
    noise = {3: torch.zeros(256, 1, 8, 8), 8: torch.ones(256, 1, 8, 8)}
    x, y = noise_dataset(noise, capped, capped.noise_per_class(mean_class))
    assert len(x) == 2 * int(mean_class) and (y == 3).sum() == int(mean_class)
    result = unsir(trained_model(), FORGET, retain_subset(train, 20), SPEC, capped)
    assert result.samples_processed["impair"] == 2 * int(mean_class) + 8 * 20
