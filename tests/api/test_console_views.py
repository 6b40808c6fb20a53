"""What the console's pages compute from the API's answers, on hand-made figures: the clock,
the gate's checks, the plots' data, the lineage tree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from app.console import views

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def request(**fields: Any) -> Any:
    base = {
        "completed_at": None,
        "closed_at": None,
        "open": True,
        "overdue": False,
        "due_at": NOW + timedelta(days=20),
        "extensions": [],
    }
    return SimpleNamespace(**{**base, **fields})


def test_the_clock_says_done_overdue_soon_or_due_and_whether_it_was_extended():
    assert views.clock(request(completed_at=NOW), NOW).state == "done"
    late = views.clock(request(due_at=NOW - timedelta(days=3), overdue=True), NOW)
    assert (late.state, late.text) == ("overdue", "overdue by 3 days (due 2026-12-03)")
    soon = views.clock(request(due_at=NOW + timedelta(days=2), extensions=[object()]), NOW)
    assert (soon.state, soon.extended) == ("due-soon", True)
    assert views.clock(request(), NOW).text == "due in 20 days (2026-12-26)"
    assert views.clock(request(open=False), NOW).state == "closed"


def figures(forget: float, member: float) -> dict[str, Any]:
    entropy = {
        "forget_member_rate": member,
        "test_member_rate": 0.6,
        "forget_heldout_member_rate": 0.3,
    }
    return {
        "forget_accuracy": forget,
        "retain_accuracy": 0.95,
        "mia": {"entropy": entropy},
        "per_class": {"test": {"0": 1.0, "1": forget, "2": None}},
    }


def metrics(with_checks: bool) -> dict[str, Any]:
    from unlearning import acceptance

    before, after = figures(0.98, 0.7), figures(0.0, 0.31)
    thresholds = {
        "max_forget_accuracy": 0.05,
        "max_retain_drop": 0.05,
        "max_mia_gap": 0.1,
        "max_forget_member_excess": 0.1,
        "max_forget_member_shortfall": 0.1,
    }
    decided = acceptance.checks(acceptance.Thresholds(**thresholds), before, after, None)
    gate: dict[str, Any] = {"thresholds": thresholds, "passed": True, "failures": []}
    if with_checks:
        gate["checks"] = decided
    return {
        "acceptance": gate,
        "before": before,
        "after": after,
        "reference": None,
        "forget": {"class_names": ["b"]},
        "cost": {
            "sample_passes": {"method": 50.0, "evaluation": 900.0, "reference": 0.0},
            "retrain": {"sample_passes": 20_000.0, "method_share": 0.0025},
        },
    }


def test_jobs_recorded_before_checks_were_kept_get_the_same_checks_back():
    recorded, worked_out = views.gate_checks(metrics(True)), views.gate_checks(metrics(False))
    assert recorded == worked_out
    assert [(c.name, c.passed) for c in recorded][:2] == [
        ("max_forget_accuracy", True),
        ("max_retain_drop", True),
    ]
    assert recorded[0].measured == "0.0%" and recorded[0].limit == "≤ 5.0%"


def test_the_evidence_names_classes_bands_the_held_out_rate_and_compares_cost():
    found = views.evidence(metrics(True), ["a", "b", "c"])
    assert [row["name"] for row in found.per_class] == ["a", "b", "c"]
    assert [row["forget"] for row in found.per_class] == [False, True, False]
    assert found.per_class[1]["values"] == [0.98, 0.0]
    assert found.band is not None
    low, high = found.band
    assert low < 0.3 < high  # around held-out data of the forgotten class
    assert [m.label for m in found.member_rates] == ["Original", "Unlearned", "Held-out data"]
    assert found.method_share == 0.0025
    assert set(found.figures) == {"per_class", "membership", "cost"}
    assert 'class="forget-label">b<' in str(found.figures["per_class"])


def version(vid: str, parent: str | None) -> Any:
    return SimpleNamespace(id=vid, parent_version_id=parent)


def test_versions_hang_under_the_version_they_came_from():
    tree = views.lineage(
        [version("1", None), version("2", "1"), version("3", "1"), version("4", None)]
    )
    assert [n.version.id for n in tree] == ["1", "4"]
    assert [c.version.id for c in tree[0].children] == ["2", "3"]


def test_a_version_says_how_far_it_drifted_and_whether_it_is_over_budget():
    assert views.drift_summary(None) is None  # an upload: a base itself
    moved = {
        "deletions": 3,
        "retain_accuracy_change": -0.0123,
        "weight_distance": 0.0412,
        "exceeded": ["max_deletions"],
    }
    assert views.drift_summary(moved) == (
        "3 deletions since its base · retain accuracy -1.2 points · weight distance 0.041 · "
        "over its budget: max_deletions"
    )
    retrained = {"retrained": True, "retrained_because": ["max_deletions"], "deletions": 0}
    assert "a new base" in str(views.drift_summary(retrained))
