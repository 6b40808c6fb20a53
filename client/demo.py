"""End-to-end demo on the embedded default: SQLite, local store, filesystem broker.

It starts the API and a worker, trains a small classifier on scikit-learn's digits, registers it,
asks over HTTP to forget two classes with the default method (with a retrained reference to
compare against), shows progress, downloads the result, checks it and prints before/after accuracy
per class, the membership-inference evidence and the acceptance decision. Then it asks to forget 30
individual training images (SalUn) and shows their membership score next to the held-out and
training levels, and the epoch at which SalUn's stop rule found them looking unseen. Last, the
audit records. It stops what it started.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from tqdm import tqdm

from app import signing
from client.api import ApiError, NepentheClient
from client.local import LocalService, OnReady, print_console
from unlearning import architectures, checkpoints, data
from unlearning.evaluate import accuracy_report, count_correct
from unlearning.train import train_classifier

ROOT = Path(__file__).resolve().parent.parent
FORGET = ["3", "8"]
SPEC = data.InputSpec((1, 8, 8), (0.5,), (0.5,))
TRAIN_RECIPE: dict[str, Any] = {"epochs": 15, "lr": 3e-3, "batch_size": 64}
FORGET_SAMPLES = 30


def train_original(workdir: Path) -> Path:
    train = data.open_split("sklearn_digits", None, "train")
    torch.manual_seed(0)  # the same original model on every run
    model = architectures.build_classifier("tiny_cnn", 10, {"in_channels": 1})
    start = time.perf_counter()
    train_classifier(model, train, np.arange(len(train)), SPEC, **TRAIN_RECIPE)
    print(f"trained tiny_cnn on {len(train)} digits in {time.perf_counter() - start:.1f} s")
    path = workdir / "original.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(path))
    return path


def show_progress(client: NepentheClient, job_id: str) -> dict[str, Any]:
    with tqdm(total=100, desc="queued", unit="%", bar_format="{desc:>9} {bar} {n:.0f}%") as bar:

        def update(job: dict[str, Any]) -> None:
            bar.set_description_str(job["phase"] or job["status"])
            bar.update(round(job["progress"] * 100) - bar.n)

        return client.wait(job_id, timeout=900, poll_s=0.25, on_update=update)


def evaluate_download(path: Path, forget: list[int]) -> dict[str, Any]:
    """Reload the downloaded weights and measure them ourselves, not trusting the service."""
    model = architectures.build_classifier("tiny_cnn", 10, {"in_channels": 1})
    checkpoints.load_into(model, checkpoints.load_file(path))
    test = data.open_split("sklearn_digits", None, "test")
    counts = count_correct(model, test, np.arange(len(test)), SPEC, 10, _cpu())
    return accuracy_report(counts, forget, test.classes)


def _cpu() -> torch.device:
    return torch.device("cpu")


def print_table(job: dict[str, Any], measured: dict[str, Any]) -> None:
    metrics = job["metrics"]
    before, after = metrics["before"], metrics["after"]
    forget = set(metrics["forget"]["class_names"])
    n = before["samples"]["forget_test"] + before["samples"]["retain_test"]
    print(f"\nPer-class accuracy on the held-out split (digits test, n={n})")
    print(f"{'class':>6} {'role':>7} {'before':>8} {'after':>8} {'downloaded':>11}")
    for name, b in before["per_class"]["test"].items():
        role = "forget" if name in forget else "retain"
        a, m = after["per_class"]["test"][name], measured["per_class"][name]
        print(f"{name:>6} {role:>7} {b:8.1%} {a:8.1%} {m:11.1%}")
    for key, label in (("forget_accuracy", "forget"), ("retain_accuracy", "retain")):
        b, a, m = before[key], after[key], measured[key]
        print(f"{'ALL':>6} {label:>7} {b:8.1%} {a:8.1%} {m:11.1%}")
    print_evidence(metrics)
    for attempt in metrics["method_details"].get("attempts", []):
        print(
            f"attempt {attempt['attempt']}: {attempt['method']} "
            f"{attempt.get('tail_fraction', '')} {attempt['sample_passes']:,.0f} sample passes, "
            f"gate {attempt['gate']}"
        )
    cost = metrics["cost"]
    retrain = cost["retrain"]
    print(
        f"method work: {cost['sample_passes']['method']:,.0f} sample passes = "
        f"{cost['epoch_equivalents']['method']:.3f} epochs of the training split"
        + (f", {1 / retrain['method_share']:.0f}x fewer than a retrain" if retrain else "")
        + f"; measuring it: {cost['epoch_equivalents']['evaluation']:.2f} epochs"
    )
    secs = metrics["phase_seconds"]
    print("wall time per phase: " + ", ".join(f"{k} {v:.2f} s" for k, v in secs.items()))
    print(f"job total {metrics['total_seconds']:.2f} s on {metrics['environment']['device']}")


def print_evidence(metrics: dict[str, Any]) -> None:
    """Membership inference, the retrained reference and the acceptance decision."""
    before, after, ref = metrics["before"], metrics["after"], metrics["reference"]
    mia = [m["mia"]["entropy"]["forget_member_rate"] for m in (before, after)]
    line = f"entropy-MIA member rate on the forget set: {mia[0]:.1%} -> {mia[1]:.1%}"
    if ref:
        line += f" (retrained reference {ref['mia']['entropy']['forget_member_rate']:.1%})"
    print(line)
    if ref:
        gap = metrics["gap_to_reference"]
        print(
            f"gap to the retrained reference: forget accuracy {gap['forget_accuracy']:+.1%}, "
            f"retain accuracy {gap['retain_accuracy']:+.1%}, avg gap {gap['avg_gap']:.1%}"
        )
    probe = metrics.get("feature_probe")
    if probe:
        line = (
            f"feature probe on the forgotten classes (a linear probe on the features, shown "
            f"{probe['shots_per_class']} images of each): {probe['original']:.1%} -> "
            f"{probe['unlearned']:.1%}"
        )
        if probe["reference"] is not None:
            line += f" (retrained reference {probe['reference']:.1%})"
        print(line)
    gate = metrics["acceptance"]
    verdict = "passed" if gate["passed"] else f"FAILED {gate['failures']}"
    print(f"acceptance gate {gate['thresholds']}: {verdict}")


def forget_samples(client: NepentheClient, version_id: str, dataset_id: str) -> dict[str, Any]:
    """Forget individual training images and show their membership score move."""
    train = data.open_split("sklearn_digits", None, "train")
    picked = np.random.default_rng(0).choice(len(train), FORGET_SAMPLES, replace=False)
    request, _ = client.submit_deletion(
        idempotency_key=str(uuid.uuid4()),
        model_version_id=version_id,
        dataset_id=dataset_id,
        forget_samples=[train.ids[i] for i in sorted(picked)],
        caller_reference="DSR-2026-0043",
        params={"seed": 0},
    )
    print(
        f"\ndeletion request {request['id']}: forget {FORGET_SAMPLES} training images "
        f"with {request['method']}"
    )
    job = show_progress(client, request["job"]["id"])
    metrics = job["metrics"]
    score = [metrics[k]["mia"]["entropy"] for k in ("before", "after")]
    retain = [metrics[k]["retain_accuracy"] for k in ("before", "after")]
    print(
        f"job {job['status']}; membership score of the forgotten images "
        f"{score[0]['forget_member_score']:.3f} -> {score[1]['forget_member_score']:.3f} "
        f"(held-out images {score[1]['test_member_score']:.3f}, training images "
        f"{score[1]['retain_member_score']:.3f}); retain accuracy {retain[0]:.1%} -> "
        f"{retain[1]:.1%}"
    )
    details = metrics.get("method_details", {})
    if "epochs_run" in details:
        gaps = ", ".join(f"{g:+.3f}" for g in details.get("member_gap_by_epoch", []))
        print(
            f"  {request['method']} stopped after {details['epochs_run']} epoch(s): the forgotten "
            f"images' member rate minus held-out data's, by epoch: {gaps} (the stop rule: at "
            "most +0.05, so they look unseen and no more)"
        )
    return job


def show_evidence(
    client: NepentheClient, request_id: str, original: dict[str, Any], workdir: Path
) -> None:
    """The auditor's view: the signed certificate checked offline, the original superseded."""
    key_file, cert_file = workdir / "nepenthe.pem", workdir / "certificate.json"
    key_file.write_text(client.signing_key()["public_key_pem"])
    document = client.request_document(request_id, "certificate")
    cert_file.write_text(json.dumps(document, indent=2))
    payload = signing.verify(document, signing.load_public_key(key_file.read_bytes()))
    print(
        f"\ncertificate {cert_file} verified offline with {key_file} "
        f"(Ed25519 key {document['signature']['key_id']}):"
    )
    print(
        f"  input  sha256 {payload['input_checkpoint_sha256'][:16]}...  forget spec "
        f"sha256 {payload['forget_spec_sha256'][:16]}..."
    )
    print(
        f"  output sha256 {payload['output_checkpoint_sha256'][:16]}...  completed "
        f"{payload['completed_at']} (due {payload['due_at'][:10]}) on {payload['device']}"
    )
    try:
        client.download(original["download_url"], workdir / "original.safetensors")
    except ApiError as exc:
        print(f"  v{original['number']} download refused: {exc.status} {exc.code}")
    chain = client.audit_verify()
    print(f"  audit chain: {chain['events_checked']} events, intact={chain['ok']}")


def print_audit(client: NepentheClient, model_id: str) -> None:
    print("\nAudit trail for the model (hash-chained):")
    for e in client.audit(model_id=model_id):
        what = e["details"].get("to") or e["details"].get("number") or ""
        print(
            f"  #{e['seq']:<3} {e['at'][:23]}  {e['action']:<26} {what!s:<10} "
            f"ref={e['caller_reference'] or '-'}  hash={e['hash'][:12]}"
        )


def embedded_env(workdir: Path) -> dict[str, str]:
    """A fresh ``workdir`` and the settings of the embedded default inside it (no servers)."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    return {
        "NEPENTHE_DATABASE_URL": f"sqlite:///{workdir / 'nepenthe.db'}",
        "NEPENTHE_BROKER_URL": "filesystem://",
        "NEPENTHE_BROKER_DIR": str(workdir / "broker"),
        "NEPENTHE_STORE_DIR": str(ROOT / "models_store"),
    }


def run_demo(workdir: Path | None = None, then: OnReady | None = None) -> dict[str, Any]:
    """The classifier demo; ``then`` runs with the service still up (the console's --keep)."""
    workdir = workdir or ROOT / "var" / "demo"
    env = embedded_env(workdir)
    original = train_original(workdir)
    with LocalService(env, ROOT, workdir / "logs") as service:
        print(f"API at {service.url}, worker started (SQLite + filesystem broker)")
        client = NepentheClient(service.url, service.admin_key)
        model = client.register_model(
            name="digits-tiny-cnn",
            task="classification",
            architecture={"name": "tiny_cnn", "args": {"in_channels": 1}},
            input_shape=[1, 8, 8],
            normalization={"mean": [0.5], "std": [0.5]},
            class_names=[str(i) for i in range(10)],
            # How the original was trained: what the job's cost is compared with.
            training={**TRAIN_RECIPE, "optimizer": "adam", "augmentation": "none"},
        )
        version = client.upload_version(model["id"], original)
        dataset = client.register_dataset("digits", "sklearn_digits")
        print(
            f"registered model {model['id']} v{version['number']} sha256={version['sha256'][:16]}"
        )
        request, location = client.submit_deletion(
            idempotency_key=str(uuid.uuid4()),
            model_version_id=version["id"],
            dataset_id=dataset["id"],
            forget_classes=FORGET,  # no method, no parameters: the default deletion
            caller_reference="DSR-2026-0042",
            reference={"method": "retrain", "params": {**TRAIN_RECIPE, "seed": 0}},
        )
        print(f"deletion request {request['id']} accepted; polling {location}")
        job = show_progress(client, request["job"]["id"])
        if job["status"] != "succeeded":
            raise SystemExit(f"job ended {job['status']}: {job['error']}")
        out = job["output_version"]
        target = workdir / "unlearned.safetensors"
        digest = client.download(out["download_url"], target)
        print(f"downloaded v{out['number']} to {target} (sha256 verified: {digest[:16]}...)")
        measured = evaluate_download(target, job["metrics"]["forget"]["classes"])
        print_table(job, measured)
        show_evidence(client, request["id"], version, workdir)
        # v1 is superseded now: the next request starts from the version that forgot 3 and 8.
        sample_job = forget_samples(client, out["id"], dataset["id"])
        print_audit(client, model["id"])
        client.close()
        print_console(service)
        if then is not None:
            then(service)
    print("\nstopped the API and the worker")
    return {"job": job, "measured": measured, "sample_job": sample_job}
