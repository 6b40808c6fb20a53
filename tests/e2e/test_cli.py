"""The ``nepenthe`` command-line client against a real API and worker (embedded default)."""

from __future__ import annotations

import json

import pytest
import safetensors.torch

from client.cli import main
from client.local import LocalService
from tests.helpers import trained_state

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("service_env", ["embedded"], indirect=True)]


@pytest.fixture
def url(service: LocalService, monkeypatch: pytest.MonkeyPatch) -> str:
    # The key as an operator hands it to a user: in the environment, not on the command line.
    monkeypatch.setenv("NEPENTHE_API_KEY", service.admin_key)
    return service.url


def run(url: str, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["--url", url, *args])
    return code, capsys.readouterr().out


def test_register_upload_forget_wait_download_audit(url, capsys, tmp_path):
    weights = tmp_path / "w.safetensors"
    safetensors.torch.save_file(trained_state(), str(weights))
    classes = ",".join(str(i) for i in range(10))
    code, out = run(
        url,
        capsys,
        "register-model",
        "--name",
        "cli-cnn",
        "--arch",
        "tiny_cnn",
        "--arch-args",
        '{"in_channels": 1}',
        "--input-shape",
        "1,8,8",
        "--mean",
        "0.5",
        "--std",
        "0.5",
        "--classes",
        classes,
    )
    assert code == 0
    assert json.loads(out)["name"] == "cli-cnn"
    code, out = run(url, capsys, "upload", "cli-cnn", str(weights))
    version = json.loads(out)
    assert code == 0
    assert version["number"] == 1
    code, _ = run(url, capsys, "register-dataset", "--name", "digits", "--kind", "sklearn_digits")
    assert code == 0
    # The ids a sample request names, read in pages of 1,000: two here.
    code, out = run(url, capsys, "samples", "digits", "--split", "train", "--limit", "5000")
    rows = [line.split("\t") for line in out.splitlines()]
    assert code == 0 and len(rows) == 1428 and rows[0] == ["0", "train", "0", "0"]
    assert len({r[0] for r in rows}) == 1428 and {r[1] for r in rows} == {"train"}
    code, out = run(
        url,
        capsys,
        "forget",
        "--version",
        version["id"],
        "--dataset",
        "digits",
        "--classes",
        "=3,8",
        "--ref",
        "CLI-1",
        "--acceptance",
        '{"max_retain_drop": 0.04}',
        "--relearn-time",
        "--budget",
        "0.2",
        "--wait",
    )
    job = json.loads(out)
    assert code == 0
    assert job["status"] == "succeeded"
    assert job["metrics"]["forget"]["class_names"] == ["3", "8"]
    assert job["metrics"]["method"] == "auto"  # no --method, no --params: the default
    assert job["metrics"]["params"]["budget_epochs"] == 0.2  # the request's budget, its own
    assert job["metrics"]["cost"]["budget_epochs"] == 0.2
    assert job["metrics"]["acceptance"]["thresholds"]["max_retain_drop"] == 0.04
    assert job["metrics"]["relearn_time"]["unlearned"]["epochs"] >= 1
    target = tmp_path / "out.safetensors"
    code, out = run(url, capsys, "download", "cli-cnn", "2", "-o", str(target))
    assert code == 0
    assert job["output_version"]["sha256"] in out
    assert target.stat().st_size == job["output_version"]["size_bytes"]
    code, out = run(url, capsys, "audit", "--ref", "CLI-1")
    actions = [json.loads(line)["action"] for line in out.splitlines()]
    assert actions == [
        "deletion_request.created",
        "job.queued",
        "job.running",
        "job.succeeded",
        "model_version.downloaded",
    ]


def test_errors_are_printed_with_their_code(url, capsys):
    code = main(["--url", url, "upload", "no-such-model", __file__])
    assert code == 1
    assert "404 model_not_found" in capsys.readouterr().err


def test_register_a_save_pretrained_folder(url, capsys, tmp_path):
    from tests.i2i_libraries import save_vq

    saved = save_vq(tmp_path / "vq")
    args = ["--name", "vq", "--input-shape", "1,28,28", "--mean", "0.5", "--std", "0.5"]
    code, out = run(url, capsys, "register-model", "--pretrained", str(saved.folder), *args)
    assert code == 0, out
    model, version = (json.loads(part) for part in out.replace("}\n{", "}\n\x00{").split("\x00"))
    assert model["architecture"] == "diffusers:VQModel"
    assert model["architecture_args"] == {"config": saved.config}
    assert model["encoder"] == ["encoder.", "quant_conv."]
    assert version["number"] == 1 and version["model_id"] == model["id"]
    missing = str(tmp_path / "none")
    assert main(["--url", url, "register-model", "--pretrained", missing, *args]) == 1
    assert "config.json" in capsys.readouterr().err


def test_a_model_registered_with_its_training_record_then_coalescing_and_a_budget(url, capsys):
    base = ["register-model", "--name", "settings-cnn", "--arch", "tiny_cnn"]
    shape = ["--arch-args", '{"in_channels": 1}', "--input-shape", "1,8,8", "--classes", "a,b"]
    training = '{"epochs": 15, "optimizer": "adam", "lr": 0.003, "batch_size": 64}'
    code, out = run(url, capsys, *base, *shape, "--training", training)
    assert code == 0 and json.loads(out)["training"]["epochs"] == 15
    assert json.loads(out)["coalescing"] is None

    budget = '{"max_deletions": 50, "retrain": true}'
    code, out = run(url, capsys, "model-settings", "settings-cnn", "--drift-budget", budget)
    assert code == 0 and json.loads(out)["drift_budget"]["max_deletions"] == 50
    code, out = run(
        url, capsys, "model-settings", "settings-cnn", "--coalescing", '{"max_wait_s": 600}'
    )
    changed = json.loads(out)
    assert code == 0 and changed["coalescing"]["max_wait_s"] == 600
    assert changed["drift_budget"]["retrain"] is True  # left out: kept
    code, out = run(url, capsys, "model-settings", "settings-cnn", "--coalescing", "null")
    assert code == 0 and json.loads(out)["coalescing"] is None
    assert json.loads(out)["drift_budget"] is not None
