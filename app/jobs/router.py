from __future__ import annotations

from fastapi import APIRouter

from app.deps import ReadSessionDep, SessionDep
from app.errors import JobNotCancelable, JobNotFound
from app.jobs import service
from app.jobs.schemas import JobEventRead, JobRead

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get(
    "/{job_id}", summary="Get a job", response_model=JobRead,
    responses={404: JobNotFound.openapi()},
)  # fmt: skip
def get_job(job_id: str, session: ReadSessionDep) -> JobRead:
    """Status, phase, fraction done, timestamps, error, metrics and the output version."""
    return service.to_read(session, service.get(session, job_id))


@router.get(
    "/{job_id}/events", summary="Job history", response_model=list[JobEventRead],
    responses={404: JobNotFound.openapi()},
)  # fmt: skip
def job_events(job_id: str, session: ReadSessionDep) -> list[JobEventRead]:
    """Every status change of the job, oldest first."""
    return [JobEventRead.model_validate(e) for e in service.events(session, job_id)]


@router.post(
    "/{job_id}/cancel", status_code=202, summary="Cancel a job", response_model=JobRead,
    responses={404: JobNotFound.openapi(), 409: JobNotCancelable.openapi()},
)  # fmt: skip
def cancel_job(job_id: str, session: SessionDep) -> JobRead:
    """A queued job is canceled at once; a running one stops at its next progress check."""
    return service.to_read(session, service.cancel(session, job_id))
