"""What the console's pages show, computed from what the API returns: the statutory clock at a
glance, the gate's checks in words, the evidence plots, a model's lineage as a tree."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from markupsafe import Markup

from app.console import plots
from app.deletions.schemas import DeletionRequestRead
from app.models.schemas import ModelVersionRead
from unlearning import acceptance

CHECK_LABELS = {
    "max_forget_accuracy": "Forget accuracy after unlearning",
    "max_retain_drop": "Fall in held-out retain accuracy",
    "max_forget_member_excess": "Forget set's member rate above held-out data's",
    "max_forget_member_shortfall": "Forget set's member rate below held-out data's",
    "max_mia_gap": "Distance from the retrained reference's member rate",
    "min_feature_probe_drop": "Fall of a feature probe's accuracy on the forgotten classes",
    "max_retain_psnr_drop": "Fall in retain completions' PSNR",
    "min_forget_psnr_drop": "Fall in forget completions' PSNR",
}


@dataclass(frozen=True)
class Clock:
    state: str  # done, closed, overdue, due-soon, due
    text: str
    extended: bool


def clock(read: DeletionRequestRead, now: datetime, soon_days: float = 7.0) -> Clock:
    """The statutory clock of a request, as a word and a sentence."""
    extended = bool(read.extensions)
    if read.completed_at is not None:
        return Clock("done", f"carried out {read.completed_at:%Y-%m-%d}", extended)
    if read.closed_at is not None:
        return Clock("closed", f"closed {read.closed_at:%Y-%m-%d}", extended)
    if not read.open:
        return Clock("closed", "withdrawn (job canceled)", extended)
    days = (read.due_at - now).total_seconds() / 86400
    if read.overdue or days < 0:
        return Clock("overdue", f"overdue by {_days(-days)} (due {read.due_at:%Y-%m-%d})", extended)
    state = "due-soon" if days <= soon_days else "due"
    return Clock(state, f"due in {_days(days)} ({read.due_at:%Y-%m-%d})", extended)


def _days(days: float) -> str:
    if days < 1:
        return f"{max(days * 24, 0):.0f} h"
    return f"{days:.0f} day" + ("" if round(days) == 1 else "s")


@dataclass(frozen=True)
class Check:
    name: str
    label: str
    measured: str
    limit: str
    passed: bool


def gate_checks(metrics: dict[str, Any] | None) -> list[Check]:
    """Each check the gate made, as recorded by the job; jobs recorded before checks were kept
    have them worked out again from their recorded figures and thresholds."""
    if not metrics or "acceptance" not in metrics:
        return []
    decided = metrics["acceptance"].get("checks")
    if decided is None:
        decided = _recomputed(metrics)
    return [_check(c) for c in decided]


def _recomputed(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    thresholds = metrics["acceptance"].get("thresholds") or {}
    try:
        if metrics.get("task") == "image_to_image":
            limits = acceptance.I2IThresholds(**thresholds)
            return acceptance.i2i_checks(limits, metrics["before"], metrics["after"])
        return acceptance.checks(
            acceptance.Thresholds(**thresholds),
            metrics["before"],
            metrics["after"],
            metrics.get("reference"),
        )
    except (KeyError, TypeError, ValueError):  # figures this console cannot read back
        return []


def _check(c: dict[str, Any]) -> Check:
    name = c["check"]
    db = "psnr" in name
    measured = "not measured" if c["measured"] is None else _figure(c["measured"], db)
    sign = "≥" if name.startswith("min_") else "≤"
    limit = f"{sign} {_figure(c['threshold'], db)}"
    if c.get("sampling_allowance"):
        limit += f" (includes {_figure(c['sampling_allowance'], db)} for sampling error)"
    return Check(name, CHECK_LABELS.get(name, name), measured, limit, bool(c["passed"]))


def _figure(value: float, db: bool) -> str:
    return f"{value:.2f} dB" if db else f"{value:.1%}"


@dataclass
class Evidence:
    """The plots of a job's metrics, and the figures behind them."""

    figures: dict[str, Markup] = field(default_factory=dict)
    per_class: list[dict[str, Any]] = field(default_factory=list)
    member_rates: list[plots.Marker] = field(default_factory=list)
    band: tuple[float, float] | None = None
    cost_rows: list[tuple[str, float, str]] = field(default_factory=list)
    method_share: float | None = None


def evidence(metrics: dict[str, Any] | None, class_names: list[str]) -> Evidence:
    found = Evidence()
    if not metrics or "before" not in metrics or "after" not in metrics:
        return found
    if metrics.get("task") == "image_to_image":
        found.figures["psnr"] = plots.psnr_bars(metrics["before"], metrics["after"])
    else:
        _accuracy(found, metrics, class_names)
        _membership(found, metrics)
    _cost(found, metrics)
    return found


def _accuracy(found: Evidence, metrics: dict[str, Any], class_names: list[str]) -> None:
    runs = [("before", "Original", "before"), ("after", "Unlearned", "after")]
    if metrics.get("reference"):
        runs.append(("reference", "Retrained reference", "reference"))
    series = []
    for key, label, css in runs:
        per_class = (metrics[key].get("per_class") or {}).get("test") or {}
        series.append(plots.Series(label, _by_name(per_class, class_names), css))
    forget = set((metrics.get("forget") or {}).get("class_names") or [])
    names = class_names or sorted(series[0].values)
    found.figures["per_class"] = plots.per_class_accuracy(names, series, forget)
    found.per_class = [
        {"name": n, "forget": n in forget, "values": [s.values.get(n) for s in series]}
        for n in plots.shown_classes(names, series, forget)
    ]


def _by_name(per_class: dict[str, float | None], class_names: list[str]) -> dict[str, float | None]:
    """Per-class figures are keyed by class index; the plot labels them by name."""
    out = {}
    for key, value in per_class.items():
        index = int(key) if str(key).isdigit() else None
        name = class_names[index] if index is not None and index < len(class_names) else key
        out[str(name)] = value
    return out


def _membership(found: Evidence, metrics: dict[str, Any]) -> None:
    markers = []
    for key, label, css in (
        ("before", "Original", "before"),
        ("after", "Unlearned", "after"),
        ("reference", "Retrained", "reference"),
    ):
        rate = ((metrics.get(key) or {}).get("mia") or {}).get("entropy", {})
        if rate.get("forget_member_rate") is not None:
            markers.append(plots.Marker(label, float(rate["forget_member_rate"]), css))
    entropy = metrics["after"].get("mia", {}).get("entropy", {})
    heldout = acceptance.heldout_member_rate(entropy) if entropy else None
    limits = _limits(metrics)
    if heldout is not None and markers:
        low = heldout - limits.get("max_forget_member_shortfall", heldout)
        high = heldout + limits.get("max_forget_member_excess", 1.0 - heldout)
        found.band = (max(low, 0.0), min(high, 1.0))
        markers.append(plots.Marker("Held-out data", float(heldout), "heldout"))
    found.member_rates = markers
    if markers:
        found.figures["membership"] = plots.membership_band(
            markers, found.band, "accepted band (held-out rate ± allowance)"
        )


def _limits(metrics: dict[str, Any]) -> dict[str, float]:
    """Each check's limit, sampling allowance included (a check that is off is absent)."""
    decided = metrics.get("acceptance", {}).get("checks")
    if decided is None:
        decided = _recomputed(metrics)
    return {c["check"]: float(c["threshold"]) for c in decided}


def _cost(found: Evidence, metrics: dict[str, Any]) -> None:
    cost = metrics.get("cost") or {}
    passes = cost.get("sample_passes") or {}
    rows = [("This job's method", float(passes.get("method") or 0.0), "after")]
    rows.append(("Its evaluation", float(passes.get("evaluation") or 0.0), "before"))
    if passes.get("reference"):
        rows.append(("Reference retrain (run)", float(passes["reference"]), "reference"))
    retrain = cost.get("retrain")
    if retrain and retrain.get("sample_passes"):
        rows.append(("A retrain (estimated)", float(retrain["sample_passes"]), "retrain"))
        found.method_share = retrain.get("method_share")
    found.cost_rows = rows
    if any(v for _, v, _ in rows):
        found.figures["cost"] = plots.bars(rows, "sample passes", "Work done against a retrain")


@dataclass
class LineageNode:
    version: ModelVersionRead
    children: list[LineageNode] = field(default_factory=list)


def lineage(versions: list[ModelVersionRead]) -> list[LineageNode]:
    """Versions as a forest: each under the version it was derived from, oldest first."""
    nodes = {v.id: LineageNode(v) for v in versions}
    roots: list[LineageNode] = []
    for v in versions:
        parent = nodes.get(v.parent_version_id or "")
        (parent.children if parent is not None else roots).append(nodes[v.id])
    return roots


def drift_summary(drift: dict[str, Any] | None) -> str | None:
    """One line on how far a version has moved from its last fully trained ancestor (None for
    an upload, which is one)."""
    if not drift:
        return None
    if drift.get("retrained"):
        because = ", ".join(drift.get("retrained_because") or [])
        return f"retrained from the training record (a new base; the budget's {because})"
    parts = [f"{drift['deletions']} deletion{'s' * (drift['deletions'] != 1)} since its base"]
    change = drift.get("retain_accuracy_change")
    if change is not None:
        parts.append(f"retain accuracy {100 * change:+.1f} points")
    psnr = drift.get("retain_psnr_change")
    if psnr is not None:
        parts.append(f"retain PSNR {psnr:+.2f} dB")
    if drift.get("weight_distance") is not None:
        parts.append(f"weight distance {drift['weight_distance']:.3f}")
    if drift.get("exceeded"):
        parts.append("over its budget: " + ", ".join(drift["exceeded"]))
    return " · ".join(parts)
