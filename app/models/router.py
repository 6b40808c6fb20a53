from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse

from app.deps import ActorDep, DownloadDep, ReadSessionDep, RegisterDep, SessionDep
from app.errors import (
    ContentSuperseded,
    InvalidArchitecture,
    InvalidCheckpoint,
    ModelNotFound,
    ModelVersionNotFound,
    NameTaken,
    TrainingRecordRequired,
    VersionSuperseded,
)
from app.models import service
from app.models.schemas import (
    ArchitectureList,
    ModelCreate,
    ModelRead,
    ModelUpdate,
    ModelVersionRead,
    TimmArchitectures,
)
from app.responses import StoredFileResponse
from app.storage import get_store, served_file
from app.uploads import TOO_LARGE, received
from app.validation import Printable
from unlearning import architectures, timm_models
from unlearning.i2i import architectures as i2i_architectures

router = APIRouter(prefix="/v1", tags=["models"])
VersionNumber = Annotated[int, Path(ge=1, le=2**31 - 1, description="version number")]


@router.get("/architectures", summary="List architectures", response_model=ArchitectureList)
def list_architectures(_: ActorDep) -> ArchitectureList:
    """Built-in small classifiers, every torchvision classifier, the timm classifiers (by the
    prefix ``timm:``), the built-in image-to-image networks and the library classes registered
    from save_pretrained files."""
    return ArchitectureList(
        **architectures.list_architectures(),
        timm=TimmArchitectures(**timm_models.summary()),
        image_to_image=sorted(i2i_architectures.BUILTIN),
        image_to_image_libraries=sorted(i2i_architectures.LIBRARY_FAMILIES),
    )


@router.post(
    "/models",
    status_code=201,
    summary="Register a model",
    response_model=ModelRead,
    responses={409: NameTaken.openapi(), 422: InvalidArchitecture.openapi()},
)
def create_model(
    body: ModelCreate, session: SessionDep, actor: RegisterDep, response: Response
) -> ModelRead:
    """Register a model: architecture, input shape, normalisation and class names."""
    model = service.create_model(session, body, actor)
    response.headers["Location"] = f"/v1/models/{model.id}"
    return ModelRead.model_validate(model)


@router.get("/models", summary="List models", response_model=list[ModelRead])
def list_models(session: ReadSessionDep, actor: ActorDep) -> list[ModelRead]:
    """Every model of the caller's organisation."""
    return [ModelRead.model_validate(m) for m in service.list_models(session, actor.org_id)]


@router.get(
    "/models/{model_ref}",
    summary="Get a model",
    response_model=ModelRead,
    responses={404: ModelNotFound.openapi()},
)
def get_model(model_ref: str, session: ReadSessionDep, actor: ActorDep) -> ModelRead:
    """A model by id or name."""
    return ModelRead.model_validate(service.get_model(session, actor.org_id, model_ref))


@router.patch(
    "/models/{model_ref}",
    summary="Change a model's coalescing or drift budget",
    response_model=ModelRead,
    responses={404: ModelNotFound.openapi(), 422: TrainingRecordRequired.openapi()},
)
def update_model(
    model_ref: str, body: ModelUpdate, session: SessionDep, actor: RegisterDep
) -> ModelRead:
    """Turn coalescing on (or change it) for the requests submitted from now on, or off with
    ``{"coalescing": null}`` (requests already waiting keep the wait they were given); set or
    remove the drift budget the same way. A field left out is kept."""
    return ModelRead.model_validate(service.update_model(session, actor, model_ref, body))


@router.post(
    "/models/{model_ref}/versions",
    status_code=201,
    summary="Upload a checkpoint version",
    response_model=ModelVersionRead,
    responses={
        404: ModelNotFound.openapi(),
        409: ContentSuperseded.openapi(),
        413: TOO_LARGE,
        422: InvalidCheckpoint.openapi(),
    },
)
def upload_version(
    model_ref: str,
    read: ReadSessionDep,
    session: SessionDep,
    actor: RegisterDep,
    response: Response,
    file: Annotated[UploadFile, File(description="safetensors, or a .pt state dict")],
    parent_version_id: Annotated[str | None, Form(max_length=200), Printable] = None,
) -> ModelVersionRead:
    """Validate the weights against the architecture and store them as a new version
    (re-serialised as safetensors: ``sha256`` names the stored file, ``uploaded_sha256`` the
    file sent). Weights of a version a deletion superseded, under any of the organisation's
    models, are refused (409 ``content_superseded``, audited) and nothing is stored."""
    try:
        with received(file) as path:
            prepared = service.prepare_version(
                read, get_store(), actor.org_id, model_ref, path, parent_version_id
            )
        version = service.record_version(session, prepared, actor)
    except ContentSuperseded as refused:
        service.record_refusal(session, actor, refused)
        raise
    response.headers["Location"] = service.download_url(version).removesuffix("/checkpoint")
    return service.version_read(version)


@router.get(
    "/models/{model_ref}/versions",
    summary="List versions",
    response_model=list[ModelVersionRead],
    responses={404: ModelNotFound.openapi()},
)
def list_versions(
    model_ref: str, session: ReadSessionDep, actor: ActorDep
) -> list[ModelVersionRead]:
    """Every version of a model, oldest first, with its lineage."""
    versions = service.list_versions(session, actor.org_id, model_ref)
    return [service.version_read(v) for v in versions]


@router.get(
    "/model-versions",
    summary="Find versions by checkpoint SHA-256",
    response_model=list[ModelVersionRead],
)
def versions_with_content(
    sha256: Annotated[
        str,
        Query(
            pattern=r"^[0-9a-fA-F]{64}$",
            description="SHA-256 of a checkpoint file: a stored one (as downloaded) or one as "
            "it was uploaded",
        ),
    ],
    session: ReadSessionDep,
    actor: ActorDep,
) -> list[ModelVersionRead]:
    """Every version of the organisation's models with these weights: whose stored or uploaded
    file has this SHA-256, and every version storing the same file as those. Oldest first, each
    with its lineage and whether a deletion superseded it."""
    versions = service.versions_with_content(session, actor.org_id, sha256.lower())
    return [service.version_read(v) for v in versions]


@router.get(
    "/models/{model_ref}/versions/{number}",
    summary="Get a version",
    response_model=ModelVersionRead,
    responses={404: ModelVersionNotFound.openapi()},
)
def get_version(
    model_ref: str, number: VersionNumber, session: ReadSessionDep, actor: ActorDep
) -> ModelVersionRead:
    """One version: digest, size, parent, the deletion request that produced it, and whether a
    later request superseded it."""
    return service.version_read(service.get_version(session, actor.org_id, model_ref, number))


@router.get(
    "/models/{model_ref}/versions/{number}/checkpoint",
    summary="Download a checkpoint",
    response_class=FileResponse,
    responses={404: ModelVersionNotFound.openapi(), 410: VersionSuperseded.openapi()},
)
def download_checkpoint(
    model_ref: str,
    number: VersionNumber,
    session: SessionDep,
    actor: DownloadDep,
    request: Request,
    override_reason: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=1000,
            description="admin only: why a superseded "
            "version must be downloaded (kept in the audit log)",
        ),
    ] = None,
) -> Response:
    """Stream the safetensors file; its SHA-256 is the ETag and the X-Checksum-SHA256 header.
    A superseded version is refused (410) unless an admin gives ``override_reason``."""
    version = service.downloadable_version(session, actor, model_ref, number, override_reason)
    etag = f'"{version.sha256}"'
    headers = {"ETag": etag, "X-Checksum-SHA256": version.sha256}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    service.record_download(session, actor, version, override_reason)
    path = served_file(version.storage_key, f"version {version.number}")
    filename = f"{version.model_id}-v{version.number}.safetensors"
    return StoredFileResponse(
        path, media_type="application/octet-stream", filename=filename, headers=headers
    )
