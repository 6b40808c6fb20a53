from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse, Response

from app.deps import ActorDep, DownloadDep, ReadSessionDep, SessionDep, SubmitDep
from app.errors import ArtifactNotFound, JobNotCancelable, JobNotFound
from app.jobs import service
from app.jobs.schemas import ArtifactRead, JobEventRead, JobRead
from app.responses import StoredFileResponse
from app.storage import served_file

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get(
    "/{job_id}",
    summary="Get a job",
    response_model=JobRead,
    responses={404: JobNotFound.openapi()},
)
def get_job(job_id: str, session: ReadSessionDep, actor: ActorDep) -> JobRead:
    """Status, phase, fraction done, timestamps, error, metrics and the output version."""
    return service.read(session, actor.org_id, job_id)


@router.get(
    "/{job_id}/events",
    summary="Job history",
    response_model=list[JobEventRead],
    responses={404: JobNotFound.openapi()},
)
def job_events(job_id: str, session: ReadSessionDep, actor: ActorDep) -> list[JobEventRead]:
    """Every status change of the job, oldest first."""
    job = service.get(session, actor.org_id, job_id)
    return [JobEventRead.model_validate(e) for e in service.events(session, job.id)]


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    summary="Cancel a job",
    response_model=JobRead,
    responses={404: JobNotFound.openapi(), 409: JobNotCancelable.openapi()},
)
def cancel_job(job_id: str, session: SessionDep, actor: SubmitDep) -> JobRead:
    """A queued job is canceled at once; a running one stops at its next progress check."""
    return service.to_read(session, service.cancel(session, actor, job_id))


ArtifactName = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")]


@router.get(
    "/{job_id}/artifacts",
    summary="List a job's artifacts",
    response_model=list[ArtifactRead],
    responses={404: JobNotFound.openapi()},
)
def list_artifacts(job_id: str, session: ReadSessionDep, actor: ActorDep) -> list[ArtifactRead]:
    """Files the job produced besides its checkpoint (image-to-image jobs: the before/after
    completion grid, ``completions.png``), for succeeded and rejected jobs alike."""
    service.get(session, actor.org_id, job_id)
    return [service.artifact_read(a) for a in service.artifacts(session, job_id)]


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download a job artifact",
    response_class=FileResponse,
    responses={404: ArtifactNotFound.openapi()},
)
def download_artifact(
    job_id: str, name: ArtifactName, session: SessionDep, actor: DownloadDep
) -> Response:
    """The file, with its SHA-256 as ETag and X-Checksum-SHA256; the download is audited."""
    found = service.download_artifact(session, actor, job_id, name)
    path = served_file(found.storage_key, f"artifact {name!r}")
    headers = {"ETag": f'"{found.sha256}"', "X-Checksum-SHA256": found.sha256}
    return StoredFileResponse(
        path, media_type=found.media_type, headers=headers, filename=f"{job_id}-{found.name}"
    )
