from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Request, Response, UploadFile
from fastapi.responses import FileResponse

from app.audit import service as audit
from app.deps import ClientDep, ReadSessionDep, SessionDep
from app.errors import (
    CheckpointMissing,
    InvalidArchitecture,
    InvalidCheckpoint,
    ModelNotFound,
    ModelVersionNotFound,
    NameTaken,
    PayloadTooLarge,
)
from app.models import repository as repo
from app.models import service
from app.models.schemas import ArchitectureList, ModelCreate, ModelRead, ModelVersionRead
from app.storage import get_store
from app.uploads import received
from unlearning import architectures
from unlearning.i2i import architectures as i2i_architectures

router = APIRouter(prefix="/v1", tags=["models"])
VersionNumber = Annotated[int, Path(ge=1, le=2**31 - 1, description="version number")]


@router.get("/architectures", summary="List architectures", response_model=ArchitectureList)
def list_architectures() -> ArchitectureList:
    """Built-in small classifiers, every torchvision classifier, and the built-in
    image-to-image networks."""
    return ArchitectureList(
        **architectures.list_architectures(), image_to_image=sorted(i2i_architectures.BUILTIN)
    )


@router.post(
    "/models", status_code=201, summary="Register a model", response_model=ModelRead,
    responses={409: NameTaken.openapi(), 422: InvalidArchitecture.openapi()},
)  # fmt: skip
def create_model(
    body: ModelCreate, session: SessionDep, client: ClientDep, response: Response
) -> ModelRead:
    """Register a model: architecture, input shape, normalisation and class names."""
    model = service.create_model(session, body, client)
    response.headers["Location"] = f"/v1/models/{model.id}"
    return ModelRead.model_validate(model)


@router.get("/models", summary="List models", response_model=list[ModelRead])
def list_models(session: ReadSessionDep) -> list[ModelRead]:
    """Every registered model."""
    return [ModelRead.model_validate(m) for m in repo.list_models(session)]


@router.get(
    "/models/{model_ref}", summary="Get a model", response_model=ModelRead,
    responses={404: ModelNotFound.openapi()},
)  # fmt: skip
def get_model(model_ref: str, session: ReadSessionDep) -> ModelRead:
    """A model by id or name."""
    return ModelRead.model_validate(service.get_model(session, model_ref))


@router.post(
    "/models/{model_ref}/versions", status_code=201, summary="Upload a checkpoint version",
    response_model=ModelVersionRead,
    responses={
        404: ModelNotFound.openapi(), 413: PayloadTooLarge.openapi(),
        422: InvalidCheckpoint.openapi(),
    },
)  # fmt: skip
def upload_version(
    model_ref: str,
    read: ReadSessionDep,
    session: SessionDep,
    client: ClientDep,
    response: Response,
    file: Annotated[UploadFile, File(description="safetensors, or a .pt state dict")],
    parent_version_id: Annotated[str | None, Form()] = None,
) -> ModelVersionRead:
    """Validate the weights against the architecture and store them as a new version."""
    with received(file) as path:
        prepared = service.prepare_version(read, get_store(), model_ref, path, parent_version_id)
    version = service.record_version(session, prepared, client)
    response.headers["Location"] = service.download_url(version).removesuffix("/checkpoint")
    return service.version_read(version)


@router.get(
    "/models/{model_ref}/versions", summary="List versions",
    response_model=list[ModelVersionRead], responses={404: ModelNotFound.openapi()},
)  # fmt: skip
def list_versions(model_ref: str, session: ReadSessionDep) -> list[ModelVersionRead]:
    """Every version of a model, oldest first, with its lineage."""
    model = service.get_model(session, model_ref)
    return [service.version_read(v) for v in repo.list_versions(session, model.id)]


@router.get(
    "/models/{model_ref}/versions/{number}", summary="Get a version",
    response_model=ModelVersionRead, responses={404: ModelVersionNotFound.openapi()},
)  # fmt: skip
def get_version(model_ref: str, number: VersionNumber, session: ReadSessionDep) -> ModelVersionRead:
    """One version: digest, size, parent and the deletion request that produced it."""
    return service.version_read(service.get_version(session, model_ref, number))


@router.get(
    "/models/{model_ref}/versions/{number}/checkpoint", summary="Download a checkpoint",
    response_class=FileResponse, responses={404: ModelVersionNotFound.openapi()},
)  # fmt: skip
def download_checkpoint(
    model_ref: str, number: VersionNumber, session: SessionDep, client: ClientDep, request: Request
) -> Response:
    """Stream the safetensors file; its SHA-256 is the ETag and the X-Checksum-SHA256 header."""
    version = service.get_version(session, model_ref, number)
    etag = f'"{version.sha256}"'
    headers = {"ETag": etag, "X-Checksum-SHA256": version.sha256}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    audit.record(
        session, "model_version.downloaded", model_id=version.model_id,
        model_version_id=version.id, request_id=version.produced_by_request_id,
        caller_reference=service.caller_reference_of(session, version),
        client_address=client, details={"number": version.number, "sha256": version.sha256},
    )  # fmt: skip
    path = get_store().path(version.storage_key)
    if not path.is_file():
        raise CheckpointMissing(
            f"the store has no file for version {version.number}; restore {version.storage_key} "
            "from backup"
        )
    filename = f"{version.model_id}-v{version.number}.safetensors"
    return FileResponse(
        path, media_type="application/octet-stream", filename=filename, headers=headers
    )
