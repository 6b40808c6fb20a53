"""How a request that did not succeed comes to an end: run again with other parameters, closed
by an operator with a reason, or satisfied by a later request that forgot all of its data.

Its deadline never moves here (only an extension moves it); every step is audited.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app import queue
from app.actors import Actor, worker_actor
from app.audit import service as audit
from app.deletions import methods, service
from app.deletions import repository as repo
from app.deletions.schemas import RetryCreate
from app.errors import InputSuperseded, RequestNotClosable, RequestNotRetryable
from app.jobs import service as jobs
from app.jobs import states
from app.orm import Dataset, DeletionRequest, Job, JobStatus, Model, ModelVersion, utcnow
from app.quotas import service as quotas

ENDED_SHORT = (JobStatus.rejected, JobStatus.failed)
# What a retried job starts again without: the last attempt's outcome stays in its history.
FRESH_RUN = {
    "metrics": None,
    "error": None,
    "progress": 0.0,
    "phase": None,
    "output_version_id": None,
    "cancel_requested_at": None,
    "attempts": 0,
    "worker": None,
    "heartbeat_at": None,
    "sent_at": None,
    "started_at": None,
    "finished_at": None,
}


def retry(session: Session, actor: Actor, request_id: str, body: RetryCreate) -> DeletionRequest:
    """Queue the request's job again, with the method, parameters, thresholds and budget the
    body changes; refused unless its job was rejected or failed and it is still open."""
    given = body.model_fields_set
    train = service.preload_train_of(actor.org_id, request_id, body.budget_epochs)
    request = service.get(session, actor.org_id, request_id, for_update=True)
    job = jobs.for_request(session, request.id)
    version = session.get(ModelVersion, request.model_version_id)
    assert version is not None
    model = session.get(Model, version.model_id)
    assert model is not None
    _check_retryable(request, job, version)
    forgets = "classes" if request.forget_classes is not None else "samples"
    method = methods.choose(
        body.method if "method" in given else request.method, forgets, model.task
    )
    if "params" in given:
        raw = body.params or {}
    else:
        raw = dict(request.params) if method.name == request.method else {}
    budget = body.budget_epochs if "budget_epochs" in given else request.budget_epochs
    family = methods.family_of(model)
    params = methods.resolve_params(method, methods.with_budget(method, raw, budget), family)
    if request.forget_classes is not None:
        methods.check_memory(method.name, params, len(request.forget_classes), model.input_shape)
    if train is None and (budget is not None or request.forget_samples is not None):
        train = service.open_train(session, request)
    if budget is not None:
        assert train is not None
        sizes = service.split_sizes(train, request.forget_classes, request.forget_samples)
        methods.check_budget(method, params, sizes, budget)
    dataset = session.get(Dataset, request.dataset_id)
    assert dataset is not None
    counts = service.cost_sizes(dataset, train, request.forget_classes, request.forget_samples)
    methods.check_least_budget(method, params, counts)
    estimate = methods.job_estimate(method, params, request.reference, counts)
    quotas.check_queue_and_cost(session, actor.org_id, version.size_bytes, estimate)
    acceptance = request.acceptance
    if "acceptance" in given and body.acceptance is not None:
        wanted = body.acceptance.model_dump(exclude_unset=True)
        acceptance = methods.resolve_acceptance(wanted, forgets, model.task)
    before = _settings(request) | {"job_status": job.status, "job_error": job.error}
    request.method, request.params = method.name, params
    request.acceptance, request.budget_epochs = acceptance, budget
    session.flush()
    audit.record(
        session,
        actor,
        "deletion_request.retried",
        model_id=model.id,
        model_version_id=version.id,
        dataset_id=request.dataset_id,
        request_id=request.id,
        job_id=job.id,
        caller_reference=request.caller_reference,
        details={"reason": body.reason, "previous": before, **_settings(request)},
    )
    moved = states.transition(
        session,
        job,
        JobStatus.queued,
        actor=actor,
        reason=f"retried by the client: {body.reason}",
        values=dict(FRESH_RUN),
        where=[Job.status.in_(ENDED_SHORT)],
    )
    if not moved:  # another retry won the race
        raise RequestNotRetryable(f"job {job.id} is {job.status} now; it was retried already")
    queue.enqueue_after_commit(session, job.id)
    return request


def _check_retryable(request: DeletionRequest, job: Job, version: ModelVersion) -> None:
    if request.closed_at is not None:
        raise RequestNotRetryable(f"the request was closed: {request.close_reason}")
    if JobStatus(job.status) not in ENDED_SHORT:
        raise RequestNotRetryable(
            f"job {job.id} is {job.status}; only a rejected or failed request runs again"
        )
    if version.superseded_at is not None:
        raise InputSuperseded(
            f"version {version.number} still holds data that deletion request "
            f"{version.superseded_by_request_id} removed; submit a new request against the "
            "version that request produced",
            superseded_by_request_id=version.superseded_by_request_id,
        )


def _settings(request: DeletionRequest) -> dict[str, Any]:
    return {
        "method": request.method,
        "params": request.params,
        "acceptance": request.acceptance,
        "budget_epochs": request.budget_epochs,
    }


def close(session: Session, actor: Actor, request_id: str, reason: str) -> DeletionRequest:
    """End a rejected or failed request without a deletion of its own, with the reason."""
    request = service.get(session, actor.org_id, request_id, for_update=True)
    job = jobs.for_request(session, request.id)
    if request.closed_at is not None:
        raise RequestNotClosable(f"the request was closed already: {request.close_reason}")
    if JobStatus(job.status) not in ENDED_SHORT:
        hint = " (cancel a queued or running job)" if not JobStatus(job.status).is_terminal else ""
        raise RequestNotClosable(
            f"job {job.id} is {job.status}; only a rejected or failed request is closed{hint}"
        )
    _mark_closed(session, request, job, actor, reason, utcnow(), None)
    return request


def satisfy_earlier(session: Session, request: DeletionRequest, at: datetime) -> list[str]:
    """Close the open requests on the same model whose data ``request`` (just succeeded) forgot
    with theirs: same dataset, and every class or sample of theirs among its own. Only those
    whose job was rejected or failed: a queued or running one still runs for itself."""
    model_id = _model_of(session, request)
    closed = []
    for earlier, job in repo.open_ended_short(
        session, request.org_id, model_id, request.dataset_id
    ):
        if earlier.id != request.id and _covers(request, earlier):
            reason = f"satisfied by deletion request {request.id}, which forgot its data"
            actor = worker_actor(request.org_id)
            _mark_closed(session, earlier, job, actor, reason, at, request.id)
            closed.append(earlier.id)
    return closed


def _covers(later: DeletionRequest, earlier: DeletionRequest) -> bool:
    if later.retain_dataset_id != earlier.retain_dataset_id:
        return False
    if earlier.forget_classes is not None:
        return later.forget_classes is not None and set(earlier.forget_classes) <= set(
            later.forget_classes
        )
    return later.forget_samples is not None and set(earlier.forget_samples or ()) <= set(
        later.forget_samples
    )


def _model_of(session: Session, request: DeletionRequest) -> str:
    version = session.get(ModelVersion, request.model_version_id)
    assert version is not None
    return version.model_id


def _mark_closed(
    session: Session,
    request: DeletionRequest,
    job: Job,
    actor: Actor,
    reason: str,
    at: datetime,
    satisfied_by: str | None,
) -> None:
    request.closed_at, request.closed_by, request.close_reason = at, actor.name, reason
    request.satisfied_by_request_id = satisfied_by
    session.flush()
    audit.record(
        session,
        actor,
        "deletion_request.satisfied" if satisfied_by else "deletion_request.closed",
        model_id=_model_of(session, request),
        model_version_id=request.model_version_id,
        dataset_id=request.dataset_id,
        request_id=request.id,
        job_id=job.id,
        caller_reference=request.caller_reference,
        details={
            "reason": reason,
            "job_status": job.status,
            "satisfied_by_request_id": satisfied_by,
            "due_at": request.due_at.isoformat(),
            "overdue": at > request.due_at,
        },
    )
