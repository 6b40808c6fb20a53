from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Response, UploadFile

from app.datasets import service
from app.datasets.schemas import NAME_PATTERN, DatasetCreate, DatasetRead
from app.deps import ActorDep, ReadSessionDep, RegisterDep, SessionDep
from app.errors import DatasetNotFound, InvalidDataset, NameTaken, PayloadTooLarge
from app.storage import get_store
from app.uploads import received

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
ERRORS: dict[int | str, dict[str, Any]] = {409: NameTaken.openapi(), 422: InvalidDataset.openapi()}


@router.post(
    "",
    status_code=201,
    summary="Register a dataset",
    response_model=DatasetRead,
    responses=ERRORS,
)
def register(
    body: DatasetCreate, session: SessionDep, actor: RegisterDep, response: Response
) -> DatasetRead:
    """Register scikit-learn digits, a Fashion-MNIST root or an ImageFolder directory."""
    dataset = service.register(session, body.name, body.kind, body.location, actor)
    response.headers["Location"] = f"/v1/datasets/{dataset.id}"
    return DatasetRead.model_validate(dataset)


@router.post(
    "/npz",
    status_code=201,
    summary="Upload an .npz dataset",
    response_model=DatasetRead,
    responses={**ERRORS, 413: PayloadTooLarge.openapi()},
)
def upload_npz(
    session: SessionDep,
    actor: RegisterDep,
    response: Response,
    name: Annotated[str, Form(min_length=1, max_length=200, pattern=NAME_PATTERN)],
    file: Annotated[UploadFile, File(description="arrays images + labels [+ ids, split]")],
) -> DatasetRead:
    """Upload images and labels (optionally ids, split, class_names) as an .npz archive."""
    with received(file) as path:
        dataset = service.register_npz(session, get_store(), name, path, actor)
    response.headers["Location"] = f"/v1/datasets/{dataset.id}"
    return DatasetRead.model_validate(dataset)


@router.get("", summary="List datasets", response_model=list[DatasetRead])
def list_datasets(session: ReadSessionDep, actor: ActorDep) -> list[DatasetRead]:
    """Every dataset of the caller's organisation."""
    return [DatasetRead.model_validate(d) for d in service.list_all(session, actor.org_id)]


@router.get(
    "/{ref}",
    summary="Get a dataset",
    response_model=DatasetRead,
    responses={404: DatasetNotFound.openapi()},
)
def get_dataset(ref: str, session: ReadSessionDep, actor: ActorDep) -> DatasetRead:
    """A dataset by id or name."""
    return DatasetRead.model_validate(service.get(session, actor.org_id, ref))
