"""Every verification metric against a case whose answer is known.

Known answers come from models built for the purpose on real digits: one that never saw class 3,
one that memorised a handful of images, and the trained original itself (whose relearn time is 0
by definition), plus synthetic outputs where the arithmetic is exact.
"""

from __future__ import annotations

import copy
import math
from functools import lru_cache

import numpy as np
import pytest
import torch

from tests.helpers import SPEC, trained_model
from unlearning import architectures, data, verify
from unlearning.train import train_classifier

CPU = torch.device("cpu")
NAMES = [str(i) for i in range(10)]


@lru_cache
def splits() -> tuple[data.ArrayImages, data.ArrayImages]:
    train, test = data.open_splits("sklearn_digits", None)
    assert isinstance(train, data.ArrayImages) and isinstance(test, data.ArrayImages)
    return train, test


def fit(indices: np.ndarray, epochs: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = architectures.build_classifier("tiny_cnn", 10, {"in_channels": 1})
    train_classifier(
        model, splits()[0], indices, SPEC, epochs=epochs, lr=3e-3, batch_size=32, seed=seed
    )
    return model


@lru_cache
def never_saw_3() -> torch.nn.Module:
    train = splits()[0]
    return fit(np.flatnonzero(train.targets != 3), epochs=15)


def class_sets(forget: list[int]) -> verify.EvalSets:
    train, test = splits()
    is_forget = np.isin(train.targets, forget)
    return verify.eval_sets(
        train, test, np.flatnonzero(is_forget), np.flatnonzero(~is_forget), forget, NAMES
    )


def outputs(probs: list[list[float]], labels: list[int]) -> verify.Outputs:
    return verify.Outputs(np.array(probs, dtype=np.float64), np.array(labels))


# --- accuracy -------------------------------------------------------------------------------


def test_accuracy_is_weighted_by_samples_and_split_per_class():
    out = outputs([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.1, 0.9]], [0, 1, 1, 0, 0])
    assert verify.accuracy(out) == pytest.approx(3 / 5)
    assert verify.per_class_accuracy(out, ["a", "b"]) == {"a": pytest.approx(2 / 3), "b": 0.5}
    assert verify.accuracy(verify.Outputs(np.empty((0, 2)), np.empty(0, dtype=int))) is None


def test_a_model_that_never_saw_a_class_has_zero_accuracy_on_it_in_every_split():
    report = verify.measure(never_saw_3(), class_sets([3]), SPEC, CPU)
    assert report["accuracy"]["forget_train"] == 0.0
    assert report["accuracy"]["forget_test"] == 0.0
    assert report["forget_accuracy"] == 0.0
    assert report["per_class"]["test"]["3"] == 0.0
    assert report["retain_accuracy"] > 0.95
    # Its predictions for 3s go to other digits, never to 3.
    dist = report["forget_predictions"]
    assert dist["counts"]["3"] == 0
    assert dist["largest_class"] != "3"
    assert sum(dist["counts"].values()) == report["samples"]["forget_test"]


# --- where a forgotten class's images go ------------------------------------------------------


def test_the_second_choice_rules_out_every_forgotten_class():
    # Classes a, b, c, d; a and b are forgotten. The first image's top two are a and b, so its
    # second choice is the best of the rest (d); the last image is already predicted as c.
    out = outputs(
        [[0.5, 0.3, 0.05, 0.15], [0.6, 0.1, 0.2, 0.1], [0.1, 0.2, 0.6, 0.1]],
        [0, 0, 1],
    )
    found = verify.forget_confusion(out, ["a", "b", "c", "d"])
    assert found == {
        "a": {"images": 2, "predicted": {"a": 2}, "second_choice": {"c": 1, "d": 1}},
        "b": {"images": 1, "predicted": {"c": 1}, "second_choice": {"c": 1}},
    }
    assert verify.total_variation({"c": 1, "d": 1}, {"c": 2}) == pytest.approx(0.5)
    assert verify.total_variation({"a": 3}, {"c": 1}) == 1.0
    assert verify.total_variation({}, {"c": 1}) is None


def test_a_model_that_never_saw_a_class_sends_it_where_the_original_second_choice_does():
    """The retrain-like model's confusion is closer to the original's second choice than a
    model that sends every 3 to one class or spreads them evenly."""
    sets = class_sets([3])
    original = verify.measure(trained_model(), sets, SPEC, CPU)
    retrained = verify.measure(never_saw_3(), sets, SPEC, CPU)
    second = original["forget_confusion"]["3"]["second_choice"]
    assert "3" not in second and sum(second.values()) == original["samples"]["forget_test"]
    close = verify.confusion_against_second_choice(original, retrained)
    assert close is not None
    near = close["per_class"]["3"]["total_variation"]
    n = original["samples"]["forget_test"]
    one_class = {"3": {"predicted": {"0": n}}}
    even = {"3": {"predicted": {str(c): n // 9 for c in range(10) if c != 3}}}
    far = [
        verify.confusion_against_second_choice(original, {"forget_confusion": other})
        for other in (one_class, even)
    ]
    assert all(f is not None and near < f["per_class"]["3"]["total_variation"] for f in far)
    assert close["mean_total_variation"] == near
    # Against itself as the reference, the distance to the reference is 0.
    with_ref = verify.confusion_against_second_choice(original, retrained, retrained)
    assert with_ref is not None
    assert with_ref["per_class"]["3"]["total_variation_to_reference"] == 0.0
    assert with_ref["per_class"]["3"]["reference_total_variation"] == near


def head_only_change() -> torch.nn.Module:
    """The original with class 3 switched off in its head alone: it never predicts 3, and its
    features are the original's."""
    model = copy.deepcopy(trained_model())
    head = verify.classifier_head(model)
    assert head is not None
    with torch.no_grad():
        head.bias[3] -= 100.0
    return model


def test_a_feature_probe_reads_a_class_the_head_alone_forgot():
    sets = class_sets([3])
    original = verify.measure(trained_model(), sets, SPEC, CPU)
    head_only = verify.measure(head_only_change(), sets, SPEC, CPU)
    retrained = verify.measure(never_saw_3(), sets, SPEC, CPU)
    assert head_only["forget_accuracy"] == 0.0  # the head forgot
    probe = original["feature_probe"]
    assert probe["accuracy"] > 0.9 and probe["feature_dim"] == 64
    assert probe["shots_per_class"] == verify.PROBE_SHOTS
    assert probe["judged_on"] == original["samples"]["forget_test"] - verify.PROBE_SHOTS
    # The features did not: the probe reads 3s from them exactly as from the original's.
    assert head_only["feature_probe"]["accuracy"] == probe["accuracy"]
    # A model that never saw a 3 has features that tell 3s apart less well.
    assert retrained["feature_probe"]["accuracy"] < probe["accuracy"]
    summary = verify.probe_summary(original, head_only, retrained)
    assert summary is not None and summary["drop"] == 0.0
    assert summary["reference"] == retrained["feature_probe"]["accuracy"]


def test_a_sample_request_has_no_forgotten_class_to_follow():
    train, test = splits()
    sets = verify.eval_sets(train, test, np.arange(20), np.arange(20, 200), None, NAMES)
    report = verify.measure(trained_model(), sets, SPEC, CPU)
    assert report["forget_confusion"] == {}
    assert report["feature_probe"] is None
    assert verify.confusion_against_second_choice(report, report) is None


# --- membership inference ---------------------------------------------------------------------


def test_entropy_attack_on_synthetic_outputs_with_a_clear_answer():
    rng = np.random.default_rng(0)
    confident = [[p, 1 - p] for p in rng.uniform(0.97, 1.0, 300)]
    unsure = [[p, 1 - p] for p in rng.uniform(0.5, 0.7, 300)]
    retain, test = outputs(confident, [0] * 300), outputs(unsure, [0] * 300)
    looks_trained = verify.entropy_mia(retain, test, outputs(confident[:50], [0] * 50))
    looks_unseen = verify.entropy_mia(retain, test, outputs(unsure[:50], [0] * 50))
    assert looks_trained["forget_member_rate"] == 1.0
    assert looks_unseen["forget_member_rate"] == 0.0
    assert looks_trained["retain_member_rate"] == 1.0 and looks_trained["test_member_rate"] == 0.0
    assert looks_trained["forget_member_score"] > 0.9 > 0.1 > looks_unseen["forget_member_score"]


def test_mia_efficacy_on_synthetic_outputs_with_a_clear_answer():
    rng = np.random.default_rng(1)
    high = [[p, 1 - p] for p in rng.uniform(0.97, 1.0, 300)]
    low = [[p, 1 - p] for p in rng.uniform(0.3, 0.6, 300)]
    retain, test = outputs(high, [0] * 300), outputs(low, [0] * 300)
    assert verify.mia_efficacy(retain, test, outputs(low[:40], [0] * 40)) == 1.0
    assert verify.mia_efficacy(retain, test, outputs(high[:40], [0] * 40)) == 0.0


@lru_cache
def memorised() -> tuple[torch.nn.Module, torch.nn.Module, verify.EvalSets]:
    """Two models trained to memorise 150 digits: one of them also on 20 more."""
    train, test = splits()
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(train), 170, replace=False)
    forget, retain = np.sort(chosen[:20]), np.sort(chosen[20:])
    with_them = fit(np.concatenate([forget, retain]), epochs=150)
    without = fit(retain, epochs=150)
    sets = verify.EvalSets(train, test, forget, retain, None, np.arange(len(test)), NAMES)
    return with_them, without, sets


def test_a_memorised_sample_is_called_a_member_and_an_unseen_one_is_not():
    with_them, without, sets = memorised()
    seen = verify.measure(with_them, sets, SPEC, CPU)
    unseen = verify.measure(without, sets, SPEC, CPU)
    assert seen["accuracy"]["forget_train"] == 1.0  # memorised
    mia_seen, mia_unseen = seen["mia"]["entropy"], unseen["mia"]["entropy"]
    # The memorised samples look like the training samples; unseen ones like held-out data.
    assert mia_seen["forget_member_rate"] >= 0.9
    assert abs(mia_unseen["forget_member_rate"] - mia_unseen["test_member_rate"]) <= 0.2
    assert mia_seen["forget_member_score"] > mia_unseen["forget_member_score"] + 0.2
    # MIA-Efficacy (the share called non-members) moves the other way.
    assert unseen["mia"]["efficacy"] > seen["mia"]["efficacy"]


# --- prediction distribution, weight distance ---------------------------------------------------


def test_prediction_distribution_of_a_constant_and_of_a_uniform_predictor():
    constant = outputs([[0.1, 0.8, 0.1]] * 6, [0, 1, 2, 0, 1, 2])
    dist = verify.prediction_distribution(constant, ["a", "b", "c"])
    assert dist == {
        "counts": {"a": 0, "b": 6, "c": 0},
        "largest_class": "b",
        "largest_share": 1.0,
        "normalised_entropy": 0.0,
    }
    spread = outputs(np.eye(3).repeat(2, axis=0).tolist(), [0] * 6)
    dist = verify.prediction_distribution(spread, ["a", "b", "c"])
    assert dist["largest_share"] == pytest.approx(1 / 3)
    assert dist["normalised_entropy"] == pytest.approx(1.0)


def test_weight_distance_is_zero_to_itself_and_exact_for_a_known_change():
    model = trained_model()
    same = verify.weight_distance(model, copy.deepcopy(model))
    assert same["total"] == 0.0 and same["normalised"] == 0.0
    moved = copy.deepcopy(model)
    name, param = next(iter(moved.named_parameters()))
    with torch.no_grad():
        param.add_(torch.full_like(param, 0.5))
    dist = verify.weight_distance(moved, model)
    expected = 0.5 * math.sqrt(param.numel())
    assert dist["layers"][name] == pytest.approx(expected)
    assert sum(v for k, v in dist["layers"].items() if k != name) == 0.0
    assert dist["total"] == pytest.approx(expected)
    norm = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in moved.parameters()))
    assert dist["normalised"] == pytest.approx(expected / norm)


# --- relearn time, gaps ---------------------------------------------------------------------


def test_relearn_time_is_zero_for_the_original_and_positive_for_a_model_that_never_saw_it():
    sets = class_sets([3])
    original = trained_model()
    target = 0.9 * verify.measure(original, sets, SPEC, CPU)["forget_accuracy"]
    assert verify.relearn_time(original, sets, SPEC, target, CPU)["epochs"] == 0
    naive = verify.relearn_time(never_saw_3(), sets, SPEC, target, CPU)
    assert naive["reached"] is True
    assert 1 <= naive["epochs"] <= 50
    assert naive["samples_processed"] == naive["epochs"] * 100  # 100 samples of the class


def test_relearn_stops_at_its_cap_and_says_so():
    sets = class_sets([3])
    capped = verify.relearn_time(
        never_saw_3(), sets, SPEC, 1.01, CPU, verify.RelearnConfig(max_epochs=2)
    )
    assert capped["reached"] is False and capped["epochs"] is None and capped["steps"] == 4


def test_gaps_to_the_reference_are_differences_and_avg_gap_their_mean_size():
    sets = class_sets([3])
    a = verify.measure(trained_model(), sets, SPEC, CPU)
    b = verify.measure(never_saw_3(), sets, SPEC, CPU)
    gap = verify.gaps(a, b)
    assert gap["forget_accuracy"] == pytest.approx(a["forget_accuracy"] - 0.0)
    assert gap["retain_accuracy"] == pytest.approx(a["retain_accuracy"] - b["retain_accuracy"])
    parts = [
        gap[k]
        for k in ("forget_train_accuracy", "retain_train_accuracy", "test_accuracy", "mia_efficacy")
    ]
    assert gap["avg_gap"] == pytest.approx(sum(abs(p) for p in parts) / 4)
    assert verify.gaps(b, b)["avg_gap"] == 0.0


def test_classes_an_earlier_deletion_removed_are_in_neither_test_set():
    from unlearning import data
    from unlearning.verify import eval_sets

    train = data.open_split("sklearn_digits", None, "train")
    test = data.open_split("sklearn_digits", None, "test")
    targets = np.asarray(train.targets)
    forget_idx = np.flatnonzero(targets == 5)
    retain_idx = np.flatnonzero(~np.isin(targets, [3, 5]))
    sets = eval_sets(
        train, test, forget_idx, retain_idx, [5], [str(i) for i in range(10)], excluded_classes=[3]
    )
    test_targets = np.asarray(test.targets)
    assert sets.forget_test is not None
    assert set(test_targets[sets.forget_test]) == {5}
    assert set(test_targets[sets.retain_test]) == set(range(10)) - {3, 5}
