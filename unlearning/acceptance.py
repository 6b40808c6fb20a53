"""The acceptance gate: the figures a deletion must reach before its checkpoint is published."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    """``None`` switches a check off. Accuracies and rates are fractions in [0, 1].

    - ``max_forget_accuracy``: the headline forget accuracy after unlearning (held-out data of
      the forget classes; the forgotten samples themselves for a sample request);
    - ``max_retain_drop``: how far held-out retain accuracy may fall below the original's;
    - ``max_mia_gap``: how far the entropy-attack member rate on the forget set may be from the
      retrained reference's (checked only when the request asked for a reference).
    """

    max_forget_accuracy: float | None = None
    max_retain_drop: float | None = 0.05
    max_mia_gap: float | None = 0.05

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, or null; got {value}")


# A model that never saw a class predicts it for none of its samples; 5% leaves room for
# held-out noise. A sample request has no such absolute target: the retrained model still
# classifies most forgotten samples correctly, so only the reference comparison applies.
DEFAULTS = {
    "classes": Thresholds(max_forget_accuracy=0.05),
    "samples": Thresholds(max_forget_accuracy=None),
}


def failures(
    thresholds: Thresholds,
    before: dict[str, Any],
    after: dict[str, Any],
    reference: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """Each failed check with what was measured; an empty list means the deletion is accepted."""
    failed: list[dict[str, Any]] = []
    forget = after["forget_accuracy"]
    if thresholds.max_forget_accuracy is not None and forget is not None:
        if forget > thresholds.max_forget_accuracy:
            failed.append({"check": "max_forget_accuracy", "measured": forget,
                           "threshold": thresholds.max_forget_accuracy})  # fmt: skip
    if thresholds.max_retain_drop is not None and before["retain_accuracy"] is not None:
        drop = before["retain_accuracy"] - after["retain_accuracy"]
        if drop > thresholds.max_retain_drop:
            failed.append({"check": "max_retain_drop", "measured": drop,
                           "threshold": thresholds.max_retain_drop})  # fmt: skip
    if thresholds.max_mia_gap is not None and reference is not None:
        mine = after["mia"]["entropy"]["forget_member_rate"]
        theirs = reference["mia"]["entropy"]["forget_member_rate"]
        if mine is not None and theirs is not None and abs(mine - theirs) > thresholds.max_mia_gap:
            failed.append({"check": "max_mia_gap", "measured": abs(mine - theirs),
                           "threshold": thresholds.max_mia_gap})  # fmt: skip
    return failed
