"""The default class deletion: distillation toward the original renormalised over the remaining
classes, the head refit, what each changes, what each costs, and the escalation record."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from tests.helpers import SPEC, trained_model
from unlearning import data, verify
from unlearning.methods import DEFAULT_METHOD, METHODS, UnlearningTask
from unlearning.methods.common import FORWARD_SHARE
from unlearning.methods.distill import (
    PASSES_PER_IMAGE,
    AutoConfig,
    DistillConfig,
    classifier_head,
    distill,
    refit_head,
    renormalised_targets,
    run_auto,
    trailing_parameters,
)

FORGET = [3, 8]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def splits() -> tuple[data.ImageSource, data.ImageSource]:
    return data.open_splits("sklearn_digits", None)


def _task(train: data.ImageSource, **changes: object) -> UnlearningTask:
    forget = np.isin(train.targets, FORGET)
    task = UnlearningTask(
        trained_model(), train, np.flatnonzero(forget), np.flatnonzero(~forget), FORGET, 10, SPEC
    )
    return dataclasses.replace(task, **changes)  # type: ignore[arg-type]


def _measure(task: UnlearningTask, test: data.ImageSource) -> dict:
    sets = verify.eval_sets(
        task.source, test, task.forget_idx, task.retain_idx, FORGET, [str(i) for i in range(10)]
    )
    return verify.measure(task.model, sets, SPEC, CPU)


def test_targets_drop_the_forgotten_classes_and_keep_the_others_proportions():
    logits = torch.tensor([[2.0, 1.0, 0.0, 5.0]])
    target = renormalised_targets(logits, [3], temperature=1.0)
    assert float(target[0, 3]) == 0.0
    assert float(target.sum()) == pytest.approx(1.0)
    kept = torch.softmax(torch.tensor([2.0, 1.0, 0.0]), dim=0)
    assert torch.allclose(target[0, :3], kept)


def test_only_the_trailing_tensors_change_and_batchnorm_statistics_stay(splits):
    train, _ = splits
    task = _task(train)
    before = copy.deepcopy(task.model.state_dict())
    config = DistillConfig(budget_epochs=0.2, tail_fraction=0.2)
    result = distill(task, copy.deepcopy(task.model), config)

    trained = set(trailing_parameters(task.model, 0.2))
    after = task.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trained
    assert not any("running" in k for k in changed)  # BatchNorm statistics are the original's
    assert all(p.requires_grad for p in task.model.parameters())  # left as it found them
    images = result.samples_processed["distill"]
    assert images == int(0.2 * len(train) / PASSES_PER_IMAGE)
    assert result.forward_samples == images  # the teacher's forward passes


def test_the_head_refit_changes_only_the_head_and_costs_forward_passes_only(splits):
    train, test = splits
    task = _task(train)
    before = copy.deepcopy(task.model.state_dict())
    original = _measure(task, test)
    result = refit_head(task, 300, DistillConfig())

    head = classifier_head(task.model, 10)
    prefix = next(name for name, m in task.model.named_modules() if m is head)
    head_keys = {f"{prefix}.weight", f"{prefix}.bias"}
    changed = {k for k, v in task.model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and changed <= head_keys
    assert result.samples_processed == {} and result.forward_samples == 300
    after = _measure(task, test)
    assert after["forget_accuracy"] <= 0.05 < original["forget_accuracy"]
    assert after["retain_accuracy"] >= original["retain_accuracy"] - 0.02


def test_the_default_stops_at_the_first_attempt_the_gate_passes(splits):
    train, _ = splits
    calls: list[int] = []

    def gate(model: torch.nn.Module) -> tuple[list[dict], int]:
        calls.append(1)
        if len(calls) == 1:
            return [{"check": "max_forget_accuracy", "measured": 0.4, "threshold": 0.05}], 123
        return [], 77

    task = _task(train, accept=gate)
    result = run_auto(task, AutoConfig())
    attempts = result.details["attempts"]
    assert [a["method"] for a in attempts] == ["head_refit", "distill"]
    assert attempts[0]["gate"] == "failed"
    assert attempts[0]["failures"][0]["check"] == "max_forget_accuracy"
    assert "max_forget_accuracy" in attempts[0]["next"] and "tail 0.2" in attempts[0]["next"]
    assert attempts[1]["gate"] == "passed" and attempts[1]["tail_fraction"] == 0.2
    assert result.check_samples == 123 + 77  # gate checks are evaluation, not method work
    spent = sum(result.samples_processed.values()) + FORWARD_SHARE * result.forward_samples
    assert spent == pytest.approx(sum(a["sample_passes"] for a in attempts))
    # Within its budget: 0.1 epoch-equivalents of the training split.
    assert spent <= 0.1 * len(train)


def test_every_attempt_runs_when_none_passes_and_the_budget_still_holds(splits):
    train, _ = splits
    failing = [{"check": "max_retain_drop", "measured": 0.2, "threshold": 0.05}]
    task = _task(train, accept=lambda _model: (failing, 0))
    result = run_auto(task, AutoConfig(budget_epochs=0.3))
    attempts = result.details["attempts"]
    assert [a.get("tail_fraction") for a in attempts] == [None, 0.2, 0.5]
    assert all(a["gate"] == "failed" for a in attempts) and "next" not in attempts[-1]
    assert sum(a["sample_passes"] for a in attempts) <= 0.3 * len(train) + 1e-6


def test_auto_is_the_default_for_classes_and_its_estimate_is_its_budget():
    assert DEFAULT_METHOD[("classification", "classes")] == "auto"
    method = METHODS["auto"]
    assert method.budgeted and method.forgets == {"classes"}
    from unlearning.methods.costs import Sizes

    assert method.estimate(AutoConfig(budget_epochs=0.05), Sizes(2_000, 300, (1_700,), 1)) == 100.0


def test_bad_parameters_are_refused_with_their_name():
    with pytest.raises(ValueError, match="tails"):
        AutoConfig(tails=(0.2, 1.5))
    with pytest.raises(ValueError, match="budget_epochs"):
        DistillConfig(budget_epochs=0.0)
    with pytest.raises(ValueError, match="head_share"):
        AutoConfig(head_share=-0.1)
