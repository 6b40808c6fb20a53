from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from app.deletions import service
from app.deletions.schemas import DeletionRequestCreate, DeletionRequestRead
from app.deps import ClientDep, ReadSessionDep, SessionDep
from app.errors import (
    DatasetNotFound,
    DeletionRequestNotFound,
    IdempotencyKeyReused,
    ModelVersionNotFound,
)

router = APIRouter(prefix="/v1/deletion-requests", tags=["deletion-requests"])


@router.post(
    "", status_code=202, summary="Submit a deletion request", response_model=DeletionRequestRead,
    responses={
        404: ModelVersionNotFound.openapi(), 422: IdempotencyKeyReused.openapi(),
        400: {"description": "Malformed JSON (code `malformed_json`)"},
    },
    openapi_extra={"x-404-also": DatasetNotFound.code},
)  # fmt: skip
def submit(
    body: DeletionRequestCreate,
    session: SessionDep,
    client: ClientDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> DeletionRequestRead:
    """Accept a request to forget classes; poll the job named by the Location header."""
    request, created = service.submit(session, body, idempotency_key, client)
    read = service.to_read(session, request)
    response.headers["Location"] = f"/v1/jobs/{read.job.id}"
    response.headers["Content-Location"] = f"/v1/deletion-requests/{request.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return read


@router.get("", summary="List deletion requests", response_model=list[DeletionRequestRead])
def list_requests(
    session: ReadSessionDep,
    model_id: str | None = None,
    caller_reference: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> list[DeletionRequestRead]:
    """Deletion requests, oldest first, optionally for one model or caller reference."""
    found = service.list_requests(session, model_id, caller_reference, limit)
    return [service.to_read(session, r) for r in found]


@router.get(
    "/{request_id}", summary="Get a deletion request", response_model=DeletionRequestRead,
    responses={404: DeletionRequestNotFound.openapi()},
)  # fmt: skip
def get_request(request_id: str, session: ReadSessionDep) -> DeletionRequestRead:
    """The request with its job's current state."""
    return service.to_read(session, service.get(session, request_id))
