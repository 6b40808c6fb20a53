"""The acceptance gate on hand-made figures, where the right decision is obvious."""

from __future__ import annotations

import pytest

from unlearning import acceptance
from unlearning.acceptance import DEFAULTS, Thresholds, failures


def figures(forget=0.0, retain=0.9, member=0.1, held_out=0.5, class_held_out=None):
    mia = {
        "forget_member_rate": member,
        "test_member_rate": held_out,
        "forget_heldout_member_rate": class_held_out,
    }
    return {"forget_accuracy": forget, "retain_accuracy": retain, "mia": {"entropy": mia}}


def checks(*args, **kwargs) -> list[str]:
    return [f["check"] for f in failures(*args, **kwargs)]


def test_a_clean_deletion_passes_the_class_defaults():
    after = figures(member=0.10, class_held_out=0.12)
    assert checks(DEFAULTS["classes"], figures(forget=0.9, retain=0.92), after, None) == []


def test_each_threshold_fails_with_what_was_measured():
    before = figures(forget=0.9, retain=0.92)
    after = figures(forget=0.2, retain=0.80, class_held_out=0.1)
    got = failures(DEFAULTS["classes"], before, after, None)
    assert got == [
        {"check": "max_forget_accuracy", "measured": 0.2, "threshold": 0.05},
        {"check": "max_retain_drop", "measured": pytest.approx(0.12), "threshold": 0.05},
    ]
    # Forget data still called members more often than held-out data: not forgotten.
    assert checks(DEFAULTS["samples"], before, figures(member=0.7, held_out=0.5), None) == [
        "max_forget_member_excess"
    ]


def test_the_reference_gap_is_checked_only_when_there_is_a_reference():
    after, reference = figures(member=0.30, held_out=0.35), figures(member=0.10)
    assert checks(DEFAULTS["samples"], figures(), after, None) == []
    assert checks(DEFAULTS["samples"], figures(), after, reference) == ["max_mia_gap"]


def test_forgetting_past_unseen_data_fails_a_sample_deletion():
    """The gate is two-sided for samples: forgotten images that look far less like members
    than held-out images do are as telling as images that still look like members."""
    over = figures(member=0.18, held_out=0.77)
    assert failures(DEFAULTS["samples"], figures(), over, None) == [
        {"check": "max_forget_member_shortfall", "measured": pytest.approx(0.59), "threshold": 0.1}
    ]
    assert checks(DEFAULTS["samples"], figures(), figures(member=0.70, held_out=0.77), None) == []


def test_a_forgotten_class_is_judged_against_held_out_images_of_that_class():
    """A class a retrained model never saw lands well below held-out data of the other classes,
    but where held-out images of the same class land: both sides are checked against those."""
    before = figures(forget=0.9)
    low = figures(member=0.05, held_out=0.6, class_held_out=0.08)
    assert checks(DEFAULTS["classes"], before, low, None) == []
    # Training images of the class far less "member" than its held-out images: over-forgotten.
    over = figures(member=0.02, held_out=0.6, class_held_out=0.40)
    assert failures(DEFAULTS["classes"], before, over, None) == [
        {"check": "max_forget_member_shortfall", "measured": pytest.approx(0.38), "threshold": 0.1}
    ]
    # And far more: the class's training images are still recognised as training data.
    under = figures(member=0.55, held_out=0.6, class_held_out=0.08)
    assert checks(DEFAULTS["classes"], before, under, None) == ["max_forget_member_excess"]
    # No held-out images of the class: the rate on all held-out data is the estimate.
    assert checks(DEFAULTS["classes"], before, figures(member=0.05, held_out=0.6), None) == [
        "max_forget_member_shortfall"
    ]


def test_null_switches_a_check_off_and_an_unmeasurable_figure_fails():
    off = Thresholds(
        max_forget_accuracy=None,
        max_retain_drop=None,
        max_mia_gap=None,
        max_forget_member_excess=None,
    )
    assert checks(off, figures(), figures(forget=1.0, retain=0.0, member=1.0), None) == []
    unmeasured = figures(forget=None, class_held_out=0.1)  # type: ignore[arg-type]
    assert checks(DEFAULTS["classes"], figures(), unmeasured, None) == ["max_forget_accuracy"]


def test_thresholds_outside_zero_to_one_are_refused():
    with pytest.raises(ValueError, match="between 0 and 1"):
        Thresholds(max_retain_drop=1.5)


def test_the_membership_band_widens_by_the_sampling_error_of_small_sets():
    before = figures(forget=0.9)
    gap = figures(member=0.10, class_held_out=0.25)  # 15 points apart
    # 2,000 images on each side: a 15-point gap is far outside chance.
    gap["samples"] = {"forget_train": 2_000, "forget_test": 2_000, "retain_test": 8_000}
    [failure] = failures(DEFAULTS["classes"], before, gap, None)
    assert failure["check"] == "max_forget_member_shortfall"
    assert failure["sampling_allowance"] == pytest.approx(0.0236, abs=1e-4)
    assert failure["threshold"] == pytest.approx(0.10 + failure["sampling_allowance"])
    # 60 held-out images of the class: the same gap is within two standard errors of 10 points.
    gap["samples"] = {"forget_train": 300, "forget_test": 60, "retain_test": 8_000}
    assert failures(DEFAULTS["classes"], before, gap, None) == []


def test_the_decision_lists_every_check_that_is_on_passed_or_not():
    before = figures(forget=0.9, retain=0.92)
    after = figures(forget=0.2, retain=0.91, member=0.1, class_held_out=0.1)
    decided = acceptance.checks(DEFAULTS["classes"], before, after, after)
    assert [(c["check"], c["passed"]) for c in decided] == [
        ("max_forget_accuracy", False),
        ("max_retain_drop", True),
        ("max_forget_member_excess", True),
        ("max_forget_member_shortfall", True),
        ("max_mia_gap", True),
    ]
    assert acceptance.failed(decided) == failures(DEFAULTS["classes"], before, after, after)
    i2i = {"retain": {"psnr": 30.0}, "forget": {"psnr": 30.0}}
    moved = {"retain": {"psnr": 29.5}, "forget": {"psnr": 27.0}}
    assert [c["passed"] for c in acceptance.i2i_checks(acceptance.I2I_DEFAULTS, i2i, moved)] == [
        True,
        True,
    ]
    stayed = {"retain": {"psnr": 29.5}, "forget": {"psnr": 29.9}}
    assert acceptance.i2i_failures(acceptance.I2I_DEFAULTS, i2i, stayed) == [
        {"check": "min_forget_psnr_drop", "measured": pytest.approx(0.1), "threshold": 1.5}
    ]


def test_the_feature_probe_check_fails_a_change_to_the_head_alone():
    """Measured on real digits: switching class 3 off in the head passes the forget-accuracy
    check and fails the probe's (its features read 3s as well as before); a model that never
    saw a 3 passes both."""
    from tests.unlearning.test_verify import (
        CPU,
        SPEC,
        class_sets,
        head_only_change,
        never_saw_3,
        trained_model,
    )
    from unlearning import verify

    sets = class_sets([3])
    before = verify.measure(trained_model(), sets, SPEC, CPU)
    limits = Thresholds(
        max_forget_accuracy=0.05,
        max_retain_drop=None,
        max_mia_gap=None,
        max_forget_member_excess=None,
        min_feature_probe_drop=0.05,
    )
    head_only = verify.measure(head_only_change(), sets, SPEC, CPU)
    failed = failures(limits, before, head_only, None)
    assert [f["check"] for f in failed] == ["min_feature_probe_drop"]
    assert failed[0]["measured"] == 0.0 and failed[0]["threshold"] == 0.05
    retrained = verify.measure(never_saw_3(), sets, SPEC, CPU)
    assert failures(limits, before, retrained, None) == []
    # Off by default: the same head-only change passes the class defaults' probe-free gate.
    assert DEFAULTS["classes"].min_feature_probe_drop is None
    # A model the probe cannot read (no linear head) fails the check when it is on.
    blind = {**head_only, "feature_probe": None}
    assert [f["check"] for f in failures(limits, before, blind, None)] == ["min_feature_probe_drop"]
