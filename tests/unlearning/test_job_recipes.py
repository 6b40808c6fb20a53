"""The job recipes (``unlearning.jobs``) run on CPU from a weights file with no database, no
broker and no service code: what they report, in which order, and what the gate decides."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from client.demo_i2i import ARCH_ARGS, ARCH_NAME, SMALL_MODEL_PARAMS, SPEC, TRANSFORM
from tests.helpers import ARCH, CLASS_NAMES, SMALL_DATA_PARAMS, i2i_trained_state, trained_state
from tests.helpers import SPEC as DIGITS_SPEC
from unlearning import acceptance, data
from unlearning.jobs import JobSpec, UnlearningDiverged, run
from unlearning.jobs.classifier import job_plan

CPU = torch.device("cpu")


class Recorder:
    """A ``JobProgress`` that remembers the plan and every phase reported."""

    def __init__(self) -> None:
        self.plan: list[str] = []
        self.phases: list[str] = []

    def set_plan(self, plan: list[tuple[str, float]]) -> None:
        self.plan = [phase for phase, _ in plan]

    def __call__(self, phase: str, fraction: float) -> None:
        assert 0.0 <= fraction <= 1.0 + 1e-9
        if not self.phases or self.phases[-1] != phase:
            self.phases.append(phase)


def _weights(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


def _class_job(**changes: object) -> JobSpec:
    job = JobSpec(
        method="unsir",
        params=dict(SMALL_DATA_PARAMS),
        forget_classes=[3, 8],
        forget_samples=None,
        acceptance=dataclasses.asdict(acceptance.DEFAULTS["classes"]),
        reference=None,
        measure_relearn_time=False,
        architecture=ARCH["name"],
        architecture_args=dict(ARCH["args"]),
        class_names=CLASS_NAMES,
        input_spec=DIGITS_SPEC,
        dataset_kind="sklearn_digits",
        dataset_location=None,
    )
    return dataclasses.replace(job, **changes)  # type: ignore[arg-type]


def test_the_recipes_import_no_service_code():
    code = (
        "import sys, unlearning.jobs; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'app', 'workers', 'celery',"
        " 'sqlalchemy', 'fastapi'}); print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_class_job_forgets_and_reports_its_phases_in_plan_order(tmp_path):
    progress = Recorder()
    job = _class_job()
    outcome = run(job, _weights(tmp_path, trained_state()), CPU, progress)

    assert outcome.failures == [] and outcome.state is not None
    metrics = outcome.metrics
    assert metrics["acceptance"]["passed"] is True
    assert metrics["after"]["forget_accuracy"] <= 0.05 < metrics["before"]["forget_accuracy"]
    confusion = metrics["forget_confusion"]
    assert set(confusion["per_class"]) == {"3", "8"}
    for row in confusion["per_class"].values():
        assert not {"3", "8"} & set(row["original_second_choice"])
        assert 0.0 <= row["total_variation"] <= 1.0
    assert metrics["forget"] == {
        "kind": "classes",
        "classes": [3, 8],
        "class_names": ["3", "8"],
        "train_samples": metrics["forget"]["train_samples"],
    }
    assert {"noise", "impair", "repair"} <= set(metrics["samples_processed"])
    assert metrics["samples_processed"]["forward_only"] > 0
    assert progress.plan == [p for p, _ in job_plan(job)]
    reported = [p for p in progress.plan if p in progress.phases]
    assert progress.phases == reported  # every phase once, in the plan's order
    assert progress.phases[0] == "load" and progress.phases[-1] == "save"
    cost = metrics["cost"]
    trained = sum(n for k, n in metrics["samples_processed"].items() if k != "forward_only")
    assert cost["sample_passes"]["method"] == trained  # UNSIR makes no forward-only passes
    assert cost["sample_passes"]["evaluation"] == pytest.approx(
        metrics["samples_processed"]["forward_only"] / 3
    )
    assert cost["epoch_equivalents"]["method"] == pytest.approx(
        trained / cost["train_split_samples"]
    )
    assert cost["retrain"] is None  # nothing says how the original was trained
    # The estimate made before it ran bounds what it spent (extra repair counted at its most).
    assert cost["estimated_method_passes"] >= trained


def test_a_feature_probe_threshold_sends_auto_past_its_head_refit(tmp_path):
    """The head refit leaves the features as they were, so with the probe check on it fails
    that check alone and the default method goes on to its next attempt."""
    limits = dataclasses.asdict(acceptance.DEFAULTS["classes"]) | {"min_feature_probe_drop": 0.05}
    job = _class_job(method="auto", params={}, acceptance=limits)
    outcome = run(job, _weights(tmp_path, trained_state()), CPU, Recorder())
    attempts = outcome.metrics["method_details"]["attempts"]
    assert attempts[0]["method"] == "head_refit" and attempts[0]["gate"] == "failed"
    assert [f["check"] for f in attempts[0]["failures"]] == ["min_feature_probe_drop"]
    assert len(attempts) > 1 and attempts[1]["method"] == "distill"
    assert outcome.metrics["after"]["forget_accuracy"] <= 0.05  # the outputs did forget


def test_forward_only_work_counts_a_third_and_a_retrain_sets_the_scale(tmp_path):
    params = {"importance_images": 300, "forget_images": 100, "bn_images": 600}
    retrain = {"epochs": 2, "lr": 1e-3, "batch_size": 128, "weight_decay": 0.0, "seed": 0}
    job = _class_job(
        method="ssd", params=params, reference={"method": "retrain", "params": retrain}
    )
    metrics = run(job, _weights(tmp_path, trained_state()), CPU, Recorder()).metrics

    cost = metrics["cost"]
    assert cost["sample_passes"]["method"] == pytest.approx(300 + 100 + 600 / 3)
    retain = cost["train_split_samples"] - metrics["forget"]["train_samples"]
    assert cost["sample_passes"]["reference"] == 2 * retain
    assert cost["retrain"]["sample_passes"] == 2 * retain
    assert cost["retrain"]["method_share"] == pytest.approx(600 / (2 * retain))


def test_the_registered_training_record_sets_the_retrain_scale(tmp_path):
    params = {"importance_images": 300, "forget_images": 100, "bn_images": 600}
    job = _class_job(method="ssd", params=params, training={"epochs": 30, "optimizer": "adam"})
    metrics = run(job, _weights(tmp_path, trained_state()), CPU, Recorder()).metrics
    retain = metrics["cost"]["train_split_samples"] - metrics["forget"]["train_samples"]
    assert metrics["cost"]["retrain"] == {
        "epochs": 30.0,
        "sample_passes": 30.0 * retain,
        "method_share": pytest.approx(600 / (30 * retain)),
    }


def test_a_result_the_gate_refuses_hands_back_no_weights(tmp_path):
    # One epoch of fine-tuning at a tiny step forgets nothing: the forget check must fail.
    barely = _class_job(method="finetune", params={"epochs": 1, "lr": 1e-6, "seed": 0})
    outcome = run(barely, _weights(tmp_path, trained_state()), CPU, Recorder())
    assert outcome.state is None
    assert "max_forget_accuracy" in [f["check"] for f in outcome.failures]
    assert outcome.metrics["acceptance"]["passed"] is False


def test_weights_that_diverge_mid_method_end_the_job_as_diverged(tmp_path):
    """SalUn checks membership after each epoch: NaN weights must stop it with the service's
    divergence error, not reach the attack's logistic regression."""
    samples = _class_job(
        method="salun",
        forget_classes=None,
        forget_samples=data.open_splits("sklearn_digits", None)[0].ids[:40],
        acceptance=dataclasses.asdict(acceptance.DEFAULTS["samples"]),
        params={"epochs": 2, "lr": 10.0, "momentum": 0.99},
    )
    with pytest.raises(UnlearningDiverged, match="learning rate"):
        run(samples, _weights(tmp_path, trained_state()), CPU, Recorder())


def test_an_image_to_image_job_moves_only_the_encoder_and_draws_its_grid(tmp_path):
    job = JobSpec(
        method="i2i",
        params=dict(SMALL_MODEL_PARAMS),
        forget_classes=[3, 8],
        forget_samples=None,
        acceptance=dataclasses.asdict(acceptance.I2I_DEFAULTS),
        reference=None,
        measure_relearn_time=False,
        architecture=ARCH_NAME,
        architecture_args=dict(ARCH_ARGS),
        class_names=[],
        input_spec=SPEC,
        dataset_kind="sklearn_digits",
        dataset_location=None,
        task="image_to_image",
        transform=dataclasses.asdict(TRANSFORM),
        dataset_class_names=CLASS_NAMES,
    )
    outcome = run(job, _weights(tmp_path, i2i_trained_state()), CPU, Recorder())

    metrics = outcome.metrics
    assert metrics["weights"]["frozen_unchanged"] is True
    assert metrics["change"]["forget"]["psnr"] < metrics["change"]["retain"]["psnr"]
    assert metrics["cost"]["estimated_method_passes"] == metrics["samples_processed"]["i2i"]
    media, grid = outcome.artifacts["completions.png"]
    assert media == "image/png" and grid.startswith(b"\x89PNG")
    assert (outcome.state is None) == bool(outcome.failures)
