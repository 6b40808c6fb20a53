"""``nepenthe``: the command-line client over the HTTP API."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from app import signing
from client.api import TERMINAL, ApiError, NepentheClient
from client.local import serve_until_interrupted


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _floats(value: str) -> list[float]:
    return [float(v) for v in _csv(value)]


def _classes(value: str) -> list[int | str]:
    """Class indices stay integers (prefix with '=' to force a name, e.g. '=3')."""
    out: list[int | str] = []
    for v in _csv(value):
        out.append(v[1:] if v.startswith("=") else int(v) if v.isdigit() else v)
    return out


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nepenthe", description=__doc__)
    p.add_argument("--url", default=os.environ.get("NEPENTHE_URL", "http://127.0.0.1:8000"))
    p.add_argument(
        "--api-key",
        default=os.environ.get("NEPENTHE_API_KEY"),
        help="API key (default: $NEPENTHE_API_KEY)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    keep = "leave the API and the worker running afterwards (for the web console)"
    demo = sub.add_parser("demo", help="run the end-to-end demo on the embedded default")
    demo.add_argument("--keep", action="store_true", help=keep)
    demo_i2i = sub.add_parser(
        "demo-i2i", help="run the image-to-image demo on the embedded default"
    )
    demo_i2i.add_argument("--keep", action="store_true", help=keep)

    reg = sub.add_parser("register-model", help="register a model")
    reg.add_argument("--name", required=True)
    reg.add_argument(
        "--task", default="classification", choices=["classification", "image_to_image"]
    )
    reg.add_argument(
        "--arch",
        help="tiny_cnn, small_resnet, mlp, torchvision or timm:<name> (classifiers); mae_vit or "
        "unet_inpainter (image_to_image); read from config.json with --pretrained",
    )
    reg.add_argument(
        "--pretrained",
        type=Path,
        help="image_to_image: a save_pretrained folder (config.json and *.safetensors); its "
        "weights are uploaded as version 1",
    )
    reg.add_argument(
        "--scheduler",
        type=Path,
        help="diffusers U-Nets: the training noise schedule's scheduler_config.json",
    )
    reg.add_argument("--sampling-steps", type=int, help="diffusers U-Nets: DDIM steps (10)")
    reg.add_argument("--arch-args", default="{}", help="JSON object")
    reg.add_argument("--input-shape", required=True, help="C,H,W")
    reg.add_argument("--mean", default="0")
    reg.add_argument("--std", default="1")
    reg.add_argument("--classes", help="comma-separated class names (classifiers)")
    reg.add_argument("--encoder", type=_csv, help="image_to_image: trained parameter prefixes")
    reg.add_argument(
        "--transform", help='image_to_image: JSON, e.g. {"kind": "center_square", "size": 0.5}'
    )

    for parser in (reg, settings := sub.add_parser("model-settings", help=MODEL_SETTINGS)):
        # Left out: not sent (SUPPRESS leaves no attribute); null: sent, turning it off.
        parser.add_argument(
            "--coalescing",
            type=json.loads,
            default=argparse.SUPPRESS,
            help='JSON, e.g. {"max_wait_s": 3600, "max_requests": 100}; null turns it off',
        )
        parser.add_argument(
            "--drift-budget",
            type=json.loads,
            default=argparse.SUPPRESS,
            help='JSON, e.g. {"max_deletions": 50, "retrain": true}; null turns it off',
        )
    reg.add_argument(
        "--training",
        type=json.loads,
        help='how the weights were trained, JSON: {"epochs": 15, "optimizer": "adam", '
        '"lr": 0.003, "batch_size": 64}',
    )
    settings.add_argument("model", help="the model's name or id")

    up = sub.add_parser("upload", help="upload a checkpoint as a new version")
    up.add_argument("model")
    up.add_argument("file", type=Path)
    up.add_argument("--parent")

    ds = sub.add_parser("register-dataset", help="register a dataset")
    ds.add_argument("--name", required=True)
    ds.add_argument(
        "--kind", required=True, choices=["sklearn_digits", "fashion_mnist", "image_folder", "npz"]
    )
    ds.add_argument("--location", help="root folder, or the .npz file to upload")

    fg = sub.add_parser("forget", help="submit a deletion request")
    fg.add_argument("--version", required=True, help="model version id")
    fg.add_argument("--dataset", required=True)
    fg.add_argument("--classes", type=_classes, help="indices or names, comma-separated")
    fg.add_argument("--samples", type=_csv, help="sample ids, comma-separated")
    fg.add_argument("--retain-dataset", help="image_to_image: a proxy retain dataset")
    fg.add_argument("--method")
    fg.add_argument("--params", default="{}", help="JSON object of method parameters")
    fg.add_argument(
        "--acceptance", default=None, help='thresholds as JSON, e.g. {"max_forget_accuracy": 0.01}'
    )
    fg.add_argument(
        "--reference-params",
        default=None,
        metavar="JSON",
        help="also retrain a reference with these parameters ({} for defaults)",
    )
    fg.add_argument("--relearn-time", action="store_true", help="also measure relearn time")
    fg.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="EPOCHS",
        help="most method work, in epochs of the training split (default method: 0.1)",
    )
    fg.add_argument("--ref", help="caller reference (ticket id)")
    fg.add_argument("--upstream-id", help="the privacy platform's data-subject request id")
    fg.add_argument("--idempotency-key", default=None)
    fg.add_argument("--wait", action="store_true", help="wait with a progress bar")

    for name, text in (("job", "show a job"), ("wait", "wait for a job"), ("cancel", "cancel")):
        sub.add_parser(name, help=text).add_argument("job_id")

    art = sub.add_parser("artifact", help="download a job artifact (e.g. completions.png)")
    art.add_argument("job_id")
    art.add_argument("name")
    art.add_argument("-o", "--output", type=Path, required=True)

    dl = sub.add_parser("download", help="download a checkpoint and verify its SHA-256")
    dl.add_argument("model")
    dl.add_argument("number", type=int)
    dl.add_argument("-o", "--output", type=Path, required=True)
    dl.add_argument("--override-reason", help="admin: why a superseded version is needed")

    au = sub.add_parser("audit", help="query the audit trail")
    for flag in ("--model", "--request", "--ref", "--action", "--by", "--since", "--until"):
        au.add_argument(flag)
    _add_compliance_commands(sub)
    return p


def _add_compliance_commands(sub: Any) -> None:
    sub.add_parser("whoami", help="the organisation and scopes of the API key")
    keys = sub.add_parser("create-key", help="admin: create an API key (token printed once)")
    keys.add_argument("--name", required=True)
    keys.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=["register", "submit", "download", "audit", "admin"],
    )
    sub.add_parser("keys", help="admin: list the organisation's API keys")
    sub.add_parser("revoke-key", help="admin: revoke an API key").add_argument("key_id")

    rq = sub.add_parser("requests", help="find deletion requests (auditor's query)")
    _add_request_filters(rq)
    sm = sub.add_parser("samples", help="a dataset's sample ids, with label and split")
    sm.add_argument("dataset")
    sm.add_argument("--split", choices=["train", "test"], help="train: the forgettable ones")
    sm.add_argument("--label", type=int, help="only this class index")
    sm.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    dd = sub.add_parser("deadlines", help="open requests overdue or due within N days")
    dd.add_argument("--within-days", type=float, default=7.0)
    ex = sub.add_parser("extend", help="extend a request's deadline, with a reason")
    ex.add_argument("request_id")
    ex.add_argument("--months", type=int, required=True)
    ex.add_argument("--reason", required=True)
    rt = sub.add_parser("retry", help="run a rejected or failed request again, with a reason")
    rt.add_argument("request_id")
    rt.add_argument("--reason", required=True)
    rt.add_argument("--method", help="default: the request's")
    rt.add_argument("--params", type=json.loads, help="JSON object (default: the request's)")
    rt.add_argument("--budget", type=float, help="epoch-equivalents (default: the request's)")
    cl = sub.add_parser("close", help="close a rejected or failed request, with a reason")
    cl.add_argument("request_id")
    cl.add_argument("--reason", required=True)
    for kind, text in (
        ("receipt", "the signed receipt"),
        ("certificate", "the signed certificate"),
        ("evidence", "the signed evidence export"),
    ):
        doc = sub.add_parser(kind, help=f"save {text} of a request")
        doc.add_argument("request_id")
        doc.add_argument("-o", "--output", type=Path, help="file (default: print)")
    vs = sub.add_parser(
        "versions",
        help="versions that still hold a request's data, or every version with some weights",
    )
    vs.add_argument("request_id", nargs="?", help="a deletion request")
    content = vs.add_mutually_exclusive_group()
    content.add_argument(
        "--sha256", help="instead: every version whose stored or uploaded file has this SHA-256"
    )
    content.add_argument(
        "--file",
        type=Path,
        help="instead: every version with this checkpoint file's weights (hashed here, not sent)",
    )
    csv_cmd = sub.add_parser("export-csv", help="export matching requests as CSV")
    csv_cmd.add_argument("-o", "--output", type=Path, required=True)
    _add_request_filters(csv_cmd)

    av = sub.add_parser("audit-verify", help="verify the organisation's audit hash chain")
    av.add_argument("--anchor", type=Path, help="a head saved earlier with audit-head")
    av.add_argument("--public-key", type=Path, help="with --anchor: the key it was signed with")
    sub.add_parser("audit-head", help="export the signed chain head").add_argument(
        "-o", "--output", type=Path, help="file (default: print)"
    )
    sk = sub.add_parser("signing-key", help="save the service's public key (PEM)")
    sk.add_argument("-o", "--output", type=Path, required=True)
    vf = sub.add_parser(
        "verify", help="verify a receipt, certificate, head or evidence file offline"
    )
    vf.add_argument("file", type=Path)
    vf.add_argument("--public-key", type=Path, required=True, help="PEM from signing-key")


def _add_request_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ref", dest="caller_reference")
    p.add_argument("--upstream-id", dest="upstream_request_id")
    p.add_argument("--model", dest="model_id")
    p.add_argument("--status", choices=sorted(TERMINAL | {"queued", "running"}))
    p.add_argument("--since", dest="received_since", help="received at or after (ISO 8601)")
    p.add_argument("--until", dest="received_until", help="received before (ISO 8601)")
    p.add_argument("--open", action="store_const", const="true", help="only open requests")
    p.add_argument("--due-before", help="deadline before (ISO 8601)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from client.demo import run_demo

        run_demo(then=serve_until_interrupted if args.keep else None)
        return 0
    if args.command == "demo-i2i":
        from client.demo_i2i import run_i2i_demo

        run_i2i_demo(then=serve_until_interrupted if args.keep else None)
        return 0
    if args.command == "verify":
        return verify_file(args.file, args.public_key)
    client = NepentheClient(args.url, args.api_key)
    try:
        return _dispatch(client, args)
    except (ApiError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()


def _pretrained_architecture(args: argparse.Namespace) -> dict[str, Any]:
    """The architecture of a save_pretrained folder: its class, from config.json (transformers
    names it under "architectures", diffusers under "_class_name"), and the file itself."""
    config = json.loads((args.pretrained / "config.json").read_text())
    name = args.arch
    if name is None and config.get("_class_name"):
        name = f"diffusers:{config['_class_name']}"
    elif name is None and config.get("architectures"):
        name = f"transformers:{config['architectures'][0]}"
    if name is None:
        raise ValueError("config.json names no class: pass --arch, e.g. diffusers:UNet2DModel")
    extra: dict[str, Any] = {"config": config}
    if args.scheduler:
        extra["scheduler"] = json.loads(args.scheduler.read_text())
    if args.sampling_steps is not None:
        extra["sampling_steps"] = args.sampling_steps
    return {"name": name, "args": extra}


MODEL_SETTINGS = "change a model's coalescing or drift budget (what is not given is kept)"


def _model_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line: an option left out is not sent, null is."""
    return {f: getattr(args, f) for f in ("coalescing", "drift_budget") if hasattr(args, f)}


def _register(client: NepentheClient, args: argparse.Namespace) -> None:
    extra: dict[str, Any] = {}
    if args.training is not None:
        extra["training"] = args.training
    extra.update(_model_settings(args))
    if args.encoder:
        extra["encoder"] = args.encoder
    if args.transform:
        extra["transform"] = json.loads(args.transform)
    if args.pretrained:
        architecture, task = _pretrained_architecture(args), "image_to_image"
        weights = sorted(args.pretrained.glob("*.safetensors"))
        if len(weights) != 1:
            raise ValueError(f"{args.pretrained} must hold one .safetensors file")
    elif args.arch:
        architecture, task = {"name": args.arch, "args": json.loads(args.arch_args)}, args.task
    else:
        raise ValueError("pass --arch, or --pretrained with a save_pretrained folder")
    model = client.register_model(
        name=args.name,
        task=task,
        architecture=architecture,
        input_shape=[int(s) for s in _csv(args.input_shape)],
        normalization={"mean": _floats(args.mean), "std": _floats(args.std)},
        class_names=_csv(args.classes or ""),
        **extra,
    )
    _print(model)
    if args.pretrained:
        _print(client.upload_version(model["id"], weights[0]))


def _dispatch(client: NepentheClient, args: argparse.Namespace) -> int:
    if args.command == "register-model":
        _register(client, args)
    elif args.command == "model-settings":
        _print(client.update_model(args.model, **_model_settings(args)))
    elif args.command == "upload":
        _print(client.upload_version(args.model, args.file, args.parent))
    elif args.command == "register-dataset":
        if args.kind == "npz":
            _print(client.upload_npz_dataset(args.name, Path(args.location)))
        else:
            _print(client.register_dataset(args.name, args.kind, args.location))
    elif args.command == "forget":
        request, location = client.submit_deletion(
            idempotency_key=args.idempotency_key or str(uuid.uuid4()),
            model_version_id=args.version,
            dataset_id=args.dataset,
            forget_classes=args.classes,
            forget_samples=args.samples,
            method=args.method,
            **({"retain_dataset_id": args.retain_dataset} if args.retain_dataset else {}),
            params=json.loads(args.params),
            caller_reference=args.ref,
            **({"upstream_request_id": args.upstream_id} if args.upstream_id else {}),
            acceptance=json.loads(args.acceptance) if args.acceptance else None,
            reference=(
                {"method": "retrain", "params": json.loads(args.reference_params)}
                if args.reference_params is not None
                else None
            ),
            measure_relearn_time=args.relearn_time,
            **({"budget_epochs": args.budget} if args.budget is not None else {}),
        )
        print(f"accepted: request {request['id']}, job at {location}", file=sys.stderr)
        if not args.wait:
            _print(request)
            return 0
        return _wait(client, request["job"]["id"])
    elif args.command == "job":
        _print(client.get_job(args.job_id))
    elif args.command == "wait":
        return _wait(client, args.job_id)
    elif args.command == "cancel":
        _print(client.cancel_job(args.job_id))
    elif args.command == "artifact":
        found = {a["name"]: a for a in client.get_job(args.job_id)["artifacts"]}
        if args.name not in found:
            print(
                f"error: job {args.job_id} has no artifact {args.name!r}; it has {sorted(found)}",
                file=sys.stderr,
            )
            return 1
        digest = client.download(found[args.name]["url"], args.output)
        print(f"{args.output}  sha256={digest}")
    elif args.command == "download":
        version = client.get_version(args.model, args.number)
        digest = client.download(version["download_url"], args.output, args.override_reason)
        print(f"{args.output}  sha256={digest}")
    elif args.command == "audit":
        for event in client.audit(
            model_id=args.model,
            request_id=args.request,
            caller_reference=args.ref,
            action=args.action,
            by=args.by,
            since=args.since,
            until=args.until,
        ):
            print(json.dumps(event, default=str))
    else:
        return _dispatch_compliance(client, args)
    return 0


FILTERS = (
    "caller_reference",
    "upstream_request_id",
    "model_id",
    "status",
    "received_since",
    "received_until",
    "open",
    "due_before",
)


def _dispatch_compliance(client: NepentheClient, args: argparse.Namespace) -> int:
    filters = {name: getattr(args, name, None) for name in FILTERS}
    if args.command == "whoami":
        _print(client.whoami())
    elif args.command == "create-key":
        _print(client.create_key(args.name, args.scope))
    elif args.command == "keys":
        _print(client.list_keys())
    elif args.command == "revoke-key":
        _print(client.revoke_key(args.key_id))
    elif args.command == "requests":
        for request in client.list_requests(filters):
            print(json.dumps(request, default=str))
    elif args.command == "samples":
        for sample in client.samples(args.dataset, args.split, args.label, args.limit):
            print(f"{sample['id']}\t{sample['split']}\t{sample['label']}\t{sample['class_name']}")
    elif args.command == "deadlines":
        for r in client.deadlines(args.within_days):
            state = "OVERDUE" if r["overdue"] else "due"
            print(
                f"{state:8} {r['due_at']}  {r['id']}  ref={r['caller_reference']}  "
                f"upstream={r['upstream_request_id']}  job={r['job']['status']}"
            )
    elif args.command == "extend":
        _print(client.extend(args.request_id, args.months, args.reason))
    elif args.command == "retry":
        changes = {"method": args.method, "params": args.params, "budget_epochs": args.budget}
        given = {k: v for k, v in changes.items() if v is not None}
        _print(client.retry(args.request_id, args.reason, **given))
    elif args.command == "close":
        _print(client.close_request(args.request_id, args.reason))
    elif args.command in ("receipt", "certificate", "evidence"):
        _save(client.request_document(args.request_id, args.command), args.output)
    elif args.command == "versions":
        return _versions(client, args)
    elif args.command == "export-csv":
        client.export_csv(args.output, **filters)
        print(args.output)
    elif args.command == "audit-verify":
        return _audit_verify(client, args.anchor, args.public_key)
    elif args.command == "audit-head":
        _save(client.audit_head(), args.output)
    elif args.command == "signing-key":
        args.output.write_text(client.signing_key()["public_key_pem"])
        print(args.output)
    return 0


def _versions(client: NepentheClient, args: argparse.Namespace) -> int:
    """A request's versions, or every version with the weights of a file or SHA-256."""
    given = [args.request_id is not None, args.sha256 is not None, args.file is not None]
    if sum(given) != 1:
        print("error: name a request id, or give --sha256 or --file", file=sys.stderr)
        return 2
    if args.request_id is not None:
        _print(client.request_versions(args.request_id))
        return 0
    digest = args.sha256
    if args.file is not None:
        with args.file.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
    _print(client.versions_with_content(digest))
    return 0


def _save(document: dict[str, Any], output: Path | None) -> None:
    if output is None:
        _print(document)
        return
    output.write_text(json.dumps(document, indent=2, sort_keys=True))
    print(output)


def _audit_verify(client: NepentheClient, anchor_file: Path | None, key: Path | None) -> int:
    """Walk the chain on the server; with a saved head, also check the log still holds it. The
    head's own signature and organisation are checked first: a forged or foreign head proves
    nothing."""
    anchor: dict[str, Any] = {}
    if anchor_file is not None:
        if key is None:
            print(
                "error: --anchor needs --public-key to check the head's signature", file=sys.stderr
            )
            return 2
        try:
            _, anchor = signing.verify_file(anchor_file, key)
        except (signing.VerificationError, ValueError) as exc:
            print(f"INVALID anchor {anchor_file}: {exc}", file=sys.stderr)
            return 1
        if (
            anchor.get("type") != "nepenthe.audit_head"
            or anchor.get("org_id") != (client.whoami()["org_id"])
        ):
            print(
                f"error: {anchor_file} is not an audit head of this organisation", file=sys.stderr
            )
            return 1
    report = client.audit_verify(anchor.get("seq"), anchor.get("hash"))
    _print(report)
    return 0 if report["ok"] else 1


def verify_file(path: Path, public_key: Path) -> int:
    """Offline: check a signed document against the published key; no server is contacted."""
    try:
        document, payload = signing.verify_file(path, public_key)
    except (signing.VerificationError, ValueError) as exc:
        print(f"INVALID: {path}: {exc}", file=sys.stderr)
        return 1
    print(f"valid {payload.get('type')} signed by key {document['signature']['key_id']}")
    for field in (
        "request_id",
        "input_checkpoint_sha256",
        "input_checkpoint_uploaded_sha256",
        "output_checkpoint_sha256",
        "forget_spec_sha256",
        "completed_at",
        "seq",
        "hash",
    ):
        if field in payload:
            print(f"  {field}: {payload[field]}")
    return 0


def _wait(client: NepentheClient, job_id: str) -> int:
    from client.demo import show_progress

    job = show_progress(client, job_id)
    _print(job)
    return 0 if job["status"] == "succeeded" else 2


if __name__ == "__main__":
    raise SystemExit(main())
