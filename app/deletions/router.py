from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from app.deletions import export, lifecycle, service
from app.deletions.schemas import (
    CloseCreate,
    DeletionRequestCreate,
    DeletionRequestRead,
    ExtensionCreate,
    RetryCreate,
    VersionContainment,
)
from app.deps import ActorDep, AuditDep, ReadSessionDep, SessionDep, SubmitDep
from app.errors import (
    CertificateNotIssued,
    DatasetNotFound,
    DeletionRequestNotFound,
    IdempotencyKeyReused,
    InputSuperseded,
    InvalidTimeBound,
    ModelVersionNotFound,
    RateLimited,
    RequestNotClosable,
    RequestNotRetryable,
    StorageQuotaExceeded,
)
from app.orm import JobStatus, utcnow
from app.validation import utc_bound

router = APIRouter(prefix="/v1/deletion-requests", tags=["deletion-requests"])


@router.post(
    "",
    status_code=202,
    summary="Submit a deletion request",
    response_model=DeletionRequestRead,
    responses={
        404: ModelVersionNotFound.openapi(),
        422: IdempotencyKeyReused.openapi(),
        409: InputSuperseded.openapi(),
        413: StorageQuotaExceeded.openapi(),
        429: RateLimited.openapi(),
        400: {"description": "Malformed JSON (code `malformed_json`)"},
    },
    openapi_extra={"x-404-also": DatasetNotFound.code},
)
def submit(
    body: DeletionRequestCreate,
    session: SessionDep,
    actor: SubmitDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> DeletionRequestRead:
    """Accept a request to forget classes or samples; its signed receipt is at ``receipt_url``.
    Poll the job named by the Location header. Per-organisation quotas may refuse it: 429
    ``rate_limited`` or ``quota_exceeded`` with Retry-After, 422 ``job_cost_limit_exceeded``,
    413 ``storage_quota_exceeded``."""
    request, created = service.submit(session, body, idempotency_key, actor)
    read = service.accepted_read(session, request) if created else service.to_read(session, request)
    response.headers["Location"] = f"/v1/jobs/{read.job.id}"
    response.headers["Content-Location"] = f"/v1/deletion-requests/{request.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return read


def request_filter(
    model_id: str | None = None,
    caller_reference: str | None = None,
    upstream_request_id: str | None = None,
    status: JobStatus | None = Query(None, description="the job's status"),
    received_since: datetime | None = Query(None, description="inclusive (ISO 8601)"),
    received_until: datetime | None = Query(None, description="exclusive (ISO 8601)"),
    open: bool | None = Query(None, description="true: not yet carried out nor canceled"),
    due_before: datetime | None = Query(None, description="deadline before this time"),
) -> service.RequestFilter:
    return service.RequestFilter(
        model_id=model_id,
        caller_reference=caller_reference,
        upstream_request_id=upstream_request_id,
        status=status,
        received_since=utc_bound(received_since, "received_since"),
        received_until=utc_bound(received_until, "received_until"),
        open=open,
        due_before=utc_bound(due_before, "due_before"),
    )


@router.get(
    "",
    summary="List deletion requests",
    response_model=list[DeletionRequestRead],
    responses={422: InvalidTimeBound.openapi()},
)
def list_requests(
    session: ReadSessionDep,
    actor: ActorDep,
    request: Request,
    response: Response,
    where: Annotated[service.RequestFilter, Depends(request_filter)],
    limit: int = Query(100, ge=1, le=1000),
    page_token: str | None = Query(None, max_length=64, description="from the Link header"),
) -> list[DeletionRequestRead]:
    """The organisation's requests in the order received, filtered in the database. When more
    match, the ``Link: <...>; rel="next"`` header names the next page."""
    found = service.list_requests(session, actor.org_id, where, page_token, limit + 1)
    if len(found) > limit:
        found = found[:limit]
        next_url = request.url.include_query_params(page_token=found[-1].id)
        response.headers["Link"] = f'<{next_url.path}?{next_url.query}>; rel="next"'
    return service.to_read_many(session, found)


@router.get(
    "/deadlines", summary="Overdue and soon-due requests", response_model=list[DeletionRequestRead]
)
def deadlines(
    session: ReadSessionDep,
    actor: ActorDep,
    within_days: float = Query(7, ge=0, le=366, description="due within this many days"),
    limit: int = Query(1000, ge=1, le=10_000),
) -> list[DeletionRequestRead]:
    """Open requests whose deadline has passed (``overdue``) or falls within ``within_days``,
    soonest first."""
    where = service.RequestFilter(open=True, due_before=utcnow() + timedelta(days=within_days))
    found = service.list_requests(session, actor.org_id, where, None, limit, soonest_due_first=True)
    return service.to_read_many(session, found)


@router.get(
    "/export.csv",
    summary="Export requests as CSV",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
def export_csv(
    actor: AuditDep,
    where: Annotated[service.RequestFilter, Depends(request_filter)],
    limit: int = Query(100_000, ge=1, le=1_000_000),
) -> StreamingResponse:
    """The matching requests, one row each: deadlines, status, output and certificate."""
    return StreamingResponse(
        export.csv_lines(actor.org_id, where, limit),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="deletion-requests.csv"'},
    )


@router.get(
    "/{request_id}",
    summary="Get a deletion request",
    response_model=DeletionRequestRead,
    responses={404: DeletionRequestNotFound.openapi()},
)
def get_request(request_id: str, session: ReadSessionDep, actor: ActorDep) -> DeletionRequestRead:
    """The request with its deadline and its job's current state."""
    return service.to_read(session, service.get(session, actor.org_id, request_id))


@router.get(
    "/{request_id}/receipt",
    summary="The signed receipt",
    responses={404: DeletionRequestNotFound.openapi()},
)
def receipt(request_id: str, session: ReadSessionDep, actor: ActorDep) -> dict[str, Any]:
    """Signed (Ed25519) when the request was accepted; verify it with `nepenthe verify`."""
    return service.receipt_of(service.get(session, actor.org_id, request_id))


@router.get(
    "/{request_id}/certificate",
    summary="The signed certificate",
    responses={404: CertificateNotIssued.openapi()},
)
def certificate(request_id: str, session: ReadSessionDep, actor: ActorDep) -> dict[str, Any]:
    """Signed when the job succeeded: times, checkpoints, method, code, device, metrics."""
    return service.certificate_of(service.get(session, actor.org_id, request_id))


@router.post(
    "/{request_id}/extensions",
    status_code=201,
    summary="Extend the deadline",
    response_model=DeletionRequestRead,
    responses={404: DeletionRequestNotFound.openapi()},
)
def extend(
    request_id: str, body: ExtensionCreate, session: SessionDep, actor: SubmitDep
) -> DeletionRequestRead:
    """Add months to the deadline, with the reason (audited; at most two months in all by
    default, decided within the first period)."""
    found = service.extend(session, actor, request_id, body.months, body.reason)
    return service.to_read(session, found)


@router.post(
    "/{request_id}/retry",
    status_code=202,
    summary="Run a rejected or failed request again",
    response_model=DeletionRequestRead,
    responses={
        404: DeletionRequestNotFound.openapi(),
        409: RequestNotRetryable.openapi(),
    },
)
def retry(
    request_id: str, body: RetryCreate, session: SessionDep, actor: SubmitDep, response: Response
) -> DeletionRequestRead:
    """Queue the request's job again with other parameters, under the same request and
    deadline (audited with the reason and the settings it replaced)."""
    found = lifecycle.retry(session, actor, request_id, body)
    read = service.to_read(session, found)
    response.headers["Location"] = f"/v1/jobs/{read.job.id}"
    return read


@router.post(
    "/{request_id}/close",
    summary="Close a rejected or failed request with a reason",
    response_model=DeletionRequestRead,
    responses={404: DeletionRequestNotFound.openapi(), 409: RequestNotClosable.openapi()},
)
def close(
    request_id: str, body: CloseCreate, session: SessionDep, actor: SubmitDep
) -> DeletionRequestRead:
    """End the request without a deletion of its own: it leaves the open requests and the
    deadlines; the reason is audited."""
    return service.to_read(session, lifecycle.close(session, actor, request_id, body.reason))


@router.get(
    "/{request_id}/versions",
    summary="Versions that still hold the data",
    response_model=list[VersionContainment],
    responses={404: DeletionRequestNotFound.openapi()},
)
def versions(request_id: str, session: ReadSessionDep, actor: ActorDep) -> list[VersionContainment]:
    """The request's input version and every version derived from it, each marked with whether
    it still contains the data the request names, and whether it is superseded."""
    return service.containment(session, service.get(session, actor.org_id, request_id))


@router.get(
    "/{request_id}/evidence",
    summary="Export a request's evidence",
    responses={404: DeletionRequestNotFound.openapi()},
)
def evidence(request_id: str, session: ReadSessionDep, actor: AuditDep) -> dict[str, Any]:
    """Receipt, certificate, job history, audit events and version containment, as one signed
    JSON document."""
    return export.evidence(session, service.get(session, actor.org_id, request_id))
