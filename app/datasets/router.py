from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Response, UploadFile

from app.datasets import service
from app.datasets.schemas import NAME_PATTERN, DatasetCreate, DatasetRead, SamplePage
from app.deps import ActorDep, ReadSessionDep, RegisterDep, SessionDep
from app.errors import DatasetNotFound, InvalidDataset, InvalidPageToken, NameTaken
from app.storage import get_store
from app.uploads import TOO_LARGE, received
from app.validation import page_position

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
    responses={**ERRORS, 413: TOO_LARGE},
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


@router.get(
    "/{ref}/samples",
    summary="List a dataset's sample ids",
    response_model=SamplePage,
    responses={404: DatasetNotFound.openapi(), 422: InvalidPageToken.openapi()},
)
def list_samples(
    ref: str,
    session: ReadSessionDep,
    actor: ActorDep,
    split: Literal["train", "test"] | None = Query(None, description="train: the forgettable ones"),
    label: int | None = Query(None, ge=0, description="only samples of this class index"),
    limit: int = Query(1000, ge=1, le=10000),
    page_token: str | None = None,
) -> SamplePage:
    """The ids a sample deletion request names, with each one's label and split."""
    offset = page_position(page_token)
    dataset = service.get(session, actor.org_id, ref)
    return service.sample_page(dataset, split, label, offset, limit)
