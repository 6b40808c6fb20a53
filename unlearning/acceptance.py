"""The acceptance gate: the figures a deletion must reach before its checkpoint is published."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    """``None`` switches a check off. Accuracies and rates are fractions in [0, 1].

    - ``max_forget_accuracy``: the headline forget accuracy after unlearning (held-out data of
      the forget classes; the forgotten samples themselves for a sample request);
    - ``max_retain_drop``: how far held-out retain accuracy may fall below the original's;
    - ``max_mia_gap``: how far the entropy-attack member rate on the forget set may be from the
      retrained reference's (checked only when the request asked for a reference);
    - ``max_forget_member_excess``: how far that member rate may exceed the rate on held-out
      data: forgotten data should look no more like training data than unseen data does;
    - ``max_forget_member_shortfall``: how far it may fall below the held-out rate: forgetting
      past what a model that never saw the data shows is itself a sign that it was removed;
    - ``min_feature_probe_drop`` (class requests): how far, at least, the accuracy of a linear
      probe on the model's features must fall from the original's on the forgotten classes'
      held-out images (``verify.feature_probe``: the probe sees a few images of each). A change
      to the head alone leaves the features, and the probe's accuracy, as they were; a model
      retrained without the class keeps generic features, so the probe still reads some of it
      (docs/benchmarks.md). A model with no linear head cannot be probed, and fails it when on.

    The held-out rate is the one a retrained model would give the forget set, estimated without
    retraining: for samples, the rate on held-out images; for classes, the rate on held-out
    images of the forgotten classes (a model that never saw a class treats its training and
    held-out images alike), or on all held-out images when the test split has none of them.
    Both rates are estimated from finite samples, so each side of the band (and the reference
    gap) is widened by two standard errors of their difference: a gap the data cannot tell from
    chance fails nothing (on 2,000 images of each the allowance is about 3 points; on 70, about
    17). The reference gap's 10 points are the tolerance docs/benchmarks.md holds the default
    class deletion to.
    """

    max_forget_accuracy: float | None = None
    max_retain_drop: float | None = 0.05
    max_mia_gap: float | None = 0.10
    max_forget_member_excess: float | None = 0.10
    max_forget_member_shortfall: float | None = None
    min_feature_probe_drop: float | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, or null; got {value}")


# A model that never saw a class predicts it for none of its samples; 5% leaves room for
# held-out noise. A sample request has no such absolute target: the retrained model still
# classifies most forgotten samples correctly, so only the reference comparison applies.
# Both sides of the membership band are on for both kinds (docs/benchmarks.md, "Default
# deletions across architectures", gives the rates they were checked against).
DEFAULTS = {
    "classes": Thresholds(max_forget_accuracy=0.05, max_forget_member_shortfall=0.10),
    "samples": Thresholds(max_forget_accuracy=None, max_forget_member_shortfall=0.10),
}


def checks(
    thresholds: Thresholds,
    before: dict[str, Any],
    after: dict[str, Any],
    reference: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """Every check that is on, passed or not, with what was measured and the limit it was held
    to (the threshold plus any sampling allowance): the gate's whole decision."""
    done: list[dict[str, Any]] = []

    def check(name: str, measured: float | None, allowance: float = 0.0) -> None:
        limit = getattr(thresholds, name)
        if limit is None:
            return
        # A figure that could not be measured fails its check: nothing unverified is accepted.
        passed = measured is not None and measured <= limit + allowance
        outcome = {"check": name, "measured": measured, "threshold": limit + allowance}
        if allowance:
            outcome["sampling_allowance"] = allowance
        done.append({**outcome, "passed": passed})

    check("max_forget_accuracy", after["forget_accuracy"])
    retain = (before["retain_accuracy"], after["retain_accuracy"])
    check("max_retain_drop", None if None in retain else retain[0] - retain[1])
    mia = after["mia"]["entropy"]
    heldout = heldout_member_rate(mia)
    allowance = _sampling_allowance(mia, after.get("samples"))
    check("max_forget_member_excess", _minus(mia["forget_member_rate"], heldout), allowance)
    check("max_forget_member_shortfall", _minus(heldout, mia["forget_member_rate"]), allowance)
    least = thresholds.min_feature_probe_drop
    if least is not None:
        drop = _minus(_probe_accuracy(before), _probe_accuracy(after))
        passed = drop is not None and drop >= least
        done.append(
            {"check": "min_feature_probe_drop", "measured": drop, "threshold": least}
            | {"passed": passed}
        )
    if reference is not None:
        theirs = reference["mia"]["entropy"]["forget_member_rate"]
        gap = _minus(mia["forget_member_rate"], theirs)
        n = (after.get("samples") or {}).get("forget_train", 0)
        check(
            "max_mia_gap",
            None if gap is None else abs(gap),
            _two_se(mia["forget_member_rate"], n, theirs, n),
        )
    return done


def _probe_accuracy(measured: dict[str, Any]) -> float | None:
    probe = measured.get("feature_probe") or {}
    accuracy = probe.get("accuracy")
    return None if accuracy is None else float(accuracy)


def failures(
    thresholds: Thresholds,
    before: dict[str, Any],
    after: dict[str, Any],
    reference: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """Each failed check with what was measured; an empty list means the deletion is accepted."""
    return failed(checks(thresholds, before, after, reference))


def failed(done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The checks of ``done`` that failed, as ``failures`` lists them."""
    return [{k: v for k, v in c.items() if k != "passed"} for c in done if not c["passed"]]


@dataclass(frozen=True)
class I2IThresholds:
    """The gate of image-to-image deletions, in dB of PSNR on the completed region of held-out
    images under the evaluation mask; ``None`` switches a check off.

    - ``max_retain_psnr_drop``: how far retain completions may fall below the original's;
    - ``min_forget_psnr_drop``: how far forget completions must fall at least.
    """

    max_retain_psnr_drop: float | None = 1.0
    min_forget_psnr_drop: float | None = 1.5

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and not 0.0 <= float(value) <= 100.0:
                raise ValueError(f"{name} must be between 0 and 100 dB, or null; got {value}")


I2I_DEFAULTS = I2IThresholds()


def i2i_checks(
    thresholds: I2IThresholds, before: dict[str, Any], after: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every check of an image-to-image deletion that is on, passed or not; a figure that
    could not be measured fails its check."""
    done: list[dict[str, Any]] = []
    retain_drop = _minus(before["retain"]["psnr"], after["retain"]["psnr"])
    limit = thresholds.max_retain_psnr_drop
    if limit is not None:
        passed = retain_drop is not None and retain_drop <= limit
        done.append(
            {"check": "max_retain_psnr_drop", "measured": retain_drop, "threshold": limit}
            | {"passed": passed}
        )
    forget_drop = _minus(before["forget"]["psnr"], after["forget"]["psnr"])
    least = thresholds.min_forget_psnr_drop
    if least is not None:
        passed = forget_drop is not None and forget_drop >= least
        done.append(
            {"check": "min_forget_psnr_drop", "measured": forget_drop, "threshold": least}
            | {"passed": passed}
        )
    return done


def i2i_failures(
    thresholds: I2IThresholds, before: dict[str, Any], after: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each failed check of an image-to-image deletion."""
    return failed(i2i_checks(thresholds, before, after))


def heldout_member_rate(entropy_mia: dict[str, Any]) -> float | None:
    """Where the forget set's member rate should land (see ``Thresholds``)."""
    forget_classes = entropy_mia.get("forget_heldout_member_rate")
    return forget_classes if forget_classes is not None else entropy_mia["test_member_rate"]


def _sampling_allowance(mia: dict[str, Any], samples: dict[str, int] | None) -> float:
    """Two standard errors of the difference between the forget and held-out member rates."""
    if not samples:
        return 0.0
    forget, heldout = mia["forget_member_rate"], heldout_member_rate(mia)
    n_forget = samples.get("forget_train", 0)
    n_heldout = samples.get("forget_test", 0)
    if mia.get("forget_heldout_member_rate") is None:
        n_heldout += samples.get("retain_test", 0)
    return _two_se(forget, n_forget, heldout, n_heldout)


def _two_se(p: float | None, n: int, q: float | None, m: int) -> float:
    """Two standard errors of the difference of rates ``p`` (over ``n``) and ``q`` (over ``m``)."""
    if p is None or q is None or not n or not m:
        return 0.0
    return round(2 * math.sqrt(p * (1 - p) / n + q * (1 - q) / m), 4)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b
