"""Deletion requests in the console: the list with the statutory clock, one request with its
job and evidence, submitting a request and canceling a job."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import (
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from pydantic import ValidationError

from app.console import views
from app.console.deps import AuditDep, DownloadDep, SignedInDep, SubmitDep, SubmitFormDep
from app.console.templating import render
from app.datasets import service as datasets
from app.deletions import export
from app.deletions import service as deletions
from app.deletions.schemas import DeletionRequestCreate
from app.deps import ReadSessionDep, SessionDep
from app.errors import RateLimited, ServiceError, Unprocessable
from app.jobs import service as jobs
from app.jobs.router import ArtifactName
from app.models import service as models
from app.orm import JobStatus, utcnow
from app.responses import StoredFileResponse
from app.storage import served_file

router = APIRouter()
PAGE = 50
DIGITS = re.compile(r"[0-9]+")


def _filter(
    status: str, model: str, caller_reference: str, due_within_days: str
) -> deletions.RequestFilter:
    """The list's filters from the form; blank fields filter nothing."""
    if status and status not in JobStatus.__members__:
        raise Unprocessable(f"unknown status {status!r}")
    due_before = None
    if due_within_days:
        try:
            days = float(due_within_days)
        except ValueError:
            raise Unprocessable("'due within' must be a number of days") from None
        if not 0 <= days <= 366:
            raise Unprocessable("'due within' must be between 0 and 366 days")
        due_before = utcnow() + timedelta(days=days)
    return deletions.RequestFilter(
        model_id=model or None,
        caller_reference=caller_reference or None,
        status=JobStatus(status) if status else None,
        open=True if due_before else None,
        due_before=due_before,
    )


@router.get("/requests")
def list_page(
    request: Request,
    session: ReadSessionDep,
    user: SignedInDep,
    status: str = "",
    model: str = "",
    caller_reference: str = "",
    due_within_days: str = "",
    page_token: str | None = None,
) -> Response:
    where = _filter(status, model, caller_reference, due_within_days)
    org = user.actor.org_id
    found = deletions.list_requests(session, org, where, page_token, PAGE + 1)
    more = len(found) > PAGE
    reads = deletions.to_read_many(session, found[:PAGE])
    now = utcnow()
    rows = [(r, views.clock(r, now)) for r in reads]
    query = {
        "status": status,
        "model": model,
        "caller_reference": caller_reference,
        "due_within_days": due_within_days,
    }
    next_page = None
    if more:
        url = request.url.include_query_params(page_token=reads[-1].id)
        next_page = f"{url.path}?{url.query}"  # relative: right behind a TLS proxy too
    return render(
        request,
        "requests.html",
        user,
        rows=rows,
        query=query,
        statuses=list(JobStatus.__members__),
        models={m.id: m.name for m in models.list_models(session, org)},
        next_page=next_page,
    )


@router.get("/requests/new")
def new_page(
    request: Request, session: ReadSessionDep, user: SubmitDep, version: str = ""
) -> Response:
    return _new_form(request, session, user, {"model_version_id": version})


def _new_form(
    request: Request,
    session: Any,
    user: Any,
    values: dict[str, str],
    problem: dict[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    org = user.actor.org_id
    choices, class_names = [], []
    for model in models.list_models(session, org):
        for v in reversed(models.list_versions(session, org, model.id)):
            if v.superseded_at is None:
                choices.append((v.id, f"{model.name} v{v.number} ({model.task})"))
        if model.class_names:
            class_names.append((model.name, list(model.class_names)))
    return render(
        request,
        "new_request.html",
        user,
        status_code=status_code,
        versions=choices,
        class_names=class_names,
        datasets=[(d.id, d.name) for d in datasets.list_all(session, org)],
        values={"idempotency_key": uuid.uuid4().hex, **values},
        problem=problem,
    )


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[\s,]+", text.strip()) if t]


def _body(form: dict[str, str]) -> DeletionRequestCreate:
    """The API's request body from the form: the same validation, the same limits."""
    doc: dict[str, Any] = {
        "model_version_id": form["model_version_id"],
        "dataset_id": form["dataset_id"],
    }
    if form["forget_kind"] == "samples":
        doc["forget_samples"] = _tokens(form["forget_samples"]) or None
        if not doc["forget_samples"]:
            raise Unprocessable("name the sample ids to forget (or choose classes)")
    else:
        classes = _tokens(form["forget_classes"])
        if not classes:
            raise Unprocessable("name the classes to forget (or choose samples)")
        # ASCII digits only: "²" or "٣" are names to the API, not indices.
        doc["forget_classes"] = [int(c) if DIGITS.fullmatch(c) else c for c in classes] or None
    for name in ("method", "caller_reference", "upstream_request_id"):
        if form[name].strip():
            doc[name] = form[name].strip()
    if form["budget_epochs"].strip():
        doc["budget_epochs"] = form["budget_epochs"].strip()
    if form["reference"]:
        doc["reference"] = {"method": "retrain"}
    return DeletionRequestCreate.model_validate(doc)


@router.post("/requests")
def submit(
    request: Request,
    session: SessionDep,
    user: SubmitFormDep,
    model_version_id: Annotated[str, Form(max_length=64)] = "",
    dataset_id: Annotated[str, Form(max_length=200)] = "",
    forget_kind: Annotated[str, Form(pattern="^(classes|samples)$")] = "classes",
    forget_classes: Annotated[str, Form(max_length=100_000)] = "",
    forget_samples: Annotated[str, Form(max_length=4_000_000)] = "",
    method: Annotated[str, Form(max_length=32)] = "",
    caller_reference: Annotated[str, Form(max_length=200)] = "",
    upstream_request_id: Annotated[str, Form(max_length=200)] = "",
    budget_epochs: Annotated[str, Form(max_length=32)] = "",
    reference: Annotated[str, Form(max_length=8)] = "",
    idempotency_key: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Submit as POST /v1/deletion-requests would, under the form's idempotency key (a second
    click, or a reload of the result, replays the first submission)."""
    form = {
        "model_version_id": model_version_id,
        "dataset_id": dataset_id,
        "forget_kind": forget_kind,
        "forget_classes": forget_classes,
        "forget_samples": forget_samples,
        "method": method,
        "caller_reference": caller_reference,
        "upstream_request_id": upstream_request_id,
        "budget_epochs": budget_epochs,
        "reference": reference,
        "idempotency_key": idempotency_key,
    }
    try:
        body = _body(form)
        created, _ = deletions.submit(session, body, idempotency_key or None, user.actor)
    except ValidationError as invalid:
        session.rollback()
        detail = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'form'}: {e['msg']}" for e in invalid.errors()
        )
        problem = {"status": 422, "code": "validation_error", "title": "Invalid request"}
        return _new_form(request, session, user, form, {**problem, "detail": detail}, 422)
    except ServiceError as refused:
        session.rollback()  # nothing of a refused submission is kept
        problem = {
            "status": refused.status,
            "code": getattr(refused, "instance_code", refused.code),
            "title": refused.title,
            "detail": refused.detail,
        }
        page = _new_form(request, session, user, form, problem, refused.status)
        page.headers.update(refused.headers)
        if isinstance(refused, RateLimited):
            page.headers["Retry-After"] = str(refused.retry_after_s)
        return page
    return RedirectResponse(f"/console/requests/{created.id}", status_code=303)


@router.get("/requests/export.csv")
def export_csv(
    user: AuditDep,
    status: str = "",
    model: str = "",
    caller_reference: str = "",
    due_within_days: str = "",
) -> StreamingResponse:
    where = _filter(status, model, caller_reference, due_within_days)
    return StreamingResponse(
        export.csv_lines(user.actor.org_id, where, 100_000),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="deletion-requests.csv"'},
    )


@router.get("/requests/{request_id}")
def request_page(
    request_id: str, request: Request, session: ReadSessionDep, user: SignedInDep
) -> Response:
    org = user.actor.org_id
    found = deletions.get(session, org, request_id)
    read = deletions.to_read(session, found)
    job = read.job
    model = models.get_model(session, org, read.model_id)
    metrics = job.metrics or {}
    grid = next((a for a in job.artifacts if a.media_type.startswith("image/")), None)
    return render(
        request,
        "request.html",
        user,
        req=read,
        job=job,
        model=model,
        input_version=models.version_of_request(session, found),
        dataset_name=datasets.get(session, org, read.dataset_id).name,
        clock=views.clock(read, utcnow()),
        events=jobs.events(session, job.id),
        checks=views.gate_checks(job.metrics),
        evidence=views.evidence(job.metrics, list(model.class_names or [])),
        attempts=(metrics.get("method_details") or {}).get("attempts") or [],
        grid=grid,
        running=not JobStatus(job.status).is_terminal,
    )


@router.post("/jobs/{job_id}/cancel")
def cancel(job_id: str, session: SessionDep, user: SubmitFormDep) -> Response:
    job = jobs.cancel(session, user.actor, job_id)
    return RedirectResponse(f"/console/requests/{job.request_id}", status_code=303)


@router.get("/requests/{request_id}/evidence")
def evidence_page(
    request_id: str, request: Request, session: ReadSessionDep, user: SignedInDep
) -> Response:
    read = deletions.to_read(session, deletions.get(session, user.actor.org_id, request_id))
    return render(request, "evidence.html", user, req=read)


@router.get("/requests/{request_id}/evidence.json")
def evidence_export(request_id: str, session: ReadSessionDep, user: AuditDep) -> JSONResponse:
    """The signed evidence export, as GET /v1/deletion-requests/{id}/evidence, as a file."""
    doc = export.evidence(session, deletions.get(session, user.actor.org_id, request_id))
    disposition = f'attachment; filename="evidence-{request_id}.json"'
    return JSONResponse(doc, headers={"Content-Disposition": disposition})


@router.get("/api/requests/{request_id}/receipt")
def receipt(request_id: str, session: ReadSessionDep, user: SignedInDep) -> dict[str, Any]:
    return deletions.receipt_of(deletions.get(session, user.actor.org_id, request_id))


@router.get("/api/requests/{request_id}/certificate")
def certificate(request_id: str, session: ReadSessionDep, user: SignedInDep) -> dict[str, Any]:
    return deletions.certificate_of(deletions.get(session, user.actor.org_id, request_id))


@router.get("/api/jobs/{job_id}")
def job_progress(job_id: str, session: ReadSessionDep, user: SignedInDep) -> dict[str, Any]:
    """What the request page updates while the job runs."""
    job = jobs.to_read(session, jobs.get(session, user.actor.org_id, job_id))
    return {
        "status": job.status,
        "phase": job.phase,
        "progress": job.progress,
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "attempts": job.attempts,
        "started_at": f"{job.started_at:%Y-%m-%d %H:%M:%S} UTC" if job.started_at else None,
        "terminal": JobStatus(job.status).is_terminal,
    }


@router.get("/jobs/{job_id}/artifacts/{name}")
def artifact(
    job_id: str, name: ArtifactName, request: Request, session: SessionDep, user: DownloadDep
) -> Response:
    """A job's file (the completion grid), as the API serves it: download scope, audited. The
    browser keeps it a day, so looking at a request page again is not another download."""
    known = jobs.artifact(session, jobs.get(session, user.actor.org_id, job_id), name)
    headers = {"ETag": f'"{known.sha256}"', "Cache-Control": "private, max-age=86400"}
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    found = jobs.download_artifact(session, user.actor, job_id, name)
    path = served_file(found.storage_key, f"artifact {name!r}")
    return StoredFileResponse(path, media_type=found.media_type, headers=headers)
