"""Dataset registration: the source is opened once to prove it reads and to count it."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.actors import Actor
from app.audit import service as audit
from app.config import get_settings
from app.datasets import repository as repo
from app.datasets.schemas import SamplePage, SampleRead
from app.db import session_scope
from app.errors import DatasetNotFound, InvalidDataset, NameTaken, UploadInflatesTooFar
from app.orm import Dataset
from app.quotas import service as quotas
from app.storage import ArtifactStore, get_store
from app.uploads import inflate_limits
from unlearning import data

STORE_PREFIX = "store:"


def register(session: Session, name: str, kind: str, location: str | None, actor: Actor) -> Dataset:
    # Read the source before the first query, so no database lock is held meanwhile.
    if location is not None:
        location = str(_allowed_path(location))
    train, test = _open_both(kind, location)
    return _insert(session, name, kind, location, train, test, actor)


def _insert(
    session: Session,
    name: str,
    kind: str,
    location: str | None,
    train: data.ImageSource,
    test: data.ImageSource,
    actor: Actor,
) -> Dataset:
    if repo.name_exists(session, actor.org_id, name):
        raise NameTaken(f"a dataset named {name!r} already exists")
    dataset = Dataset(
        org_id=actor.org_id,
        name=name,
        kind=kind,
        location=location,
        class_names=list(train.classes),
        image_shape=_image_shape(train),
        train_count=len(train),
        test_count=len(test),
    )
    try:
        repo.insert_dataset(session, dataset)
    except IntegrityError as exc:
        raise NameTaken(f"a dataset named {name!r} already exists") from exc
    audit.record(
        session,
        actor,
        "dataset.registered",
        dataset_id=dataset.id,
        details={"name": name, "kind": kind, "train": len(train), "test": len(test)},
    )
    return dataset


def register_npz(
    session: Session, store: ArtifactStore, name: str, upload: Path, actor: Actor
) -> Dataset:
    # Validate and check the name before storing, so a refused upload leaves nothing on disk;
    # the name check only reads, so no write lock is held while a large archive is written.
    train, test = _open_both("npz", str(upload))
    if repo.name_exists(session, actor.org_id, name):
        raise NameTaken(f"a dataset named {name!r} already exists")
    quotas.check_storage(session, actor.org_id, upload.stat().st_size, what="this dataset")
    stored = store.put_bytes(upload.read_bytes(), ".npz")
    location = STORE_PREFIX + stored.key
    try:
        return _insert(session, name, "npz", location, train, test, actor)
    except NameTaken:
        # Lost a race for the name: keep the file only if another dataset holds the same bytes
        # (asked in a session of its own: this one's transaction has failed).
        with session_scope(read_only=True) as other:
            if not repo.location_used(other, location):
                store.delete(stored.key)
        raise


def _allowed_path(location: str) -> Path:
    """The resolved folder, if it lies under one of the configured data roots."""
    roots = [r.resolve() for r in get_settings().data_roots]
    try:
        path = Path(location).expanduser().resolve()
    except (OSError, ValueError, RuntimeError) as exc:
        raise InvalidDataset(f"unusable location: {exc}", code="dataset_unreadable") from exc
    if not any(path == root or path.is_relative_to(root) for root in roots):
        # The roots themselves are the server's layout: not for its clients to read.
        raise InvalidDataset(
            "the location is outside the folders this server reads datasets from "
            "(NEPENTHE_DATA_ROOTS; ask its operator which they are)",
            code="dataset_location_forbidden",
        )
    return path


def _open_both(kind: str, location: str | None) -> tuple[data.ImageSource, data.ImageSource]:
    try:
        # An .npz archive is bounded before anything is inflated.
        train, test = data.open_splits(kind, location, limits=inflate_limits())
    except data.DatasetError as exc:
        if exc.code == UploadInflatesTooFar.code:
            raise UploadInflatesTooFar(str(exc)) from exc
        raise InvalidDataset(str(exc), code=exc.code) from exc
    except (OSError, ValueError, RuntimeError) as exc:  # filesystem trouble is the input's
        raise InvalidDataset(f"cannot read the dataset: {exc}", code="dataset_unreadable") from exc
    if len(train) == 0 or len(test) == 0:
        raise InvalidDataset(
            f"the dataset needs both splits: {len(train)} train and {len(test)} held-out samples",
            code="dataset_split_empty",
        )
    return train, test


def _image_shape(source: data.ImageSource) -> list[int] | None:
    if isinstance(source, data.ArrayImages):
        return [int(s) for s in source.data.shape[1:]]
    return None  # folder images vary in size; they are resized to the model's input


def resolve_location(location: str | None) -> str | None:
    """Turn a stored location into a path the data loaders can open."""
    if location is None or not location.startswith(STORE_PREFIX):
        return location
    return str(get_store().local_path(location.removeprefix(STORE_PREFIX)))


def get(session: Session, org_id: str, ref: str) -> Dataset:
    """The organisation's dataset by id, else by name (an id always wins, so a name cannot
    shadow another dataset); another organisation's dataset is not found."""
    dataset = repo.find_dataset(session, org_id, ref)
    if dataset is None:
        raise DatasetNotFound(f"no dataset {ref!r}")
    return dataset


def list_all(session: Session, org_id: str) -> list[Dataset]:
    return repo.list_datasets(session, org_id)


def sample_page(
    dataset: Dataset, split: str | None, label: int | None, offset: int, limit: int
) -> SamplePage:
    """One page of the dataset's samples, train and held-out in the source's order."""
    index = _index_of(dataset)
    keep = np.ones(len(index.ids), dtype=bool)
    if split is not None:
        keep &= index.held_out == (split == "test")
    if label is not None:
        keep &= index.labels == label
    rows = np.flatnonzero(keep)
    page = rows[offset : offset + limit]
    items = [
        SampleRead(
            id=index.ids[i],
            split="test" if index.held_out[i] else "train",
            label=int(index.labels[i]),
            class_name=_class_name(index.classes, int(index.labels[i])),
        )
        for i in page
    ]
    more = offset + limit < len(rows)
    return SamplePage(
        items=items, total=len(rows), next_page_token=str(offset + limit) if more else None
    )


def _class_name(classes: list[str], label: int) -> str:
    return classes[label] if label < len(classes) else str(label)


def _index_of(dataset: Dataset) -> data.SampleIndex:
    location = resolve_location(dataset.location)
    # A folder's files may change under it: its modification time is part of the key.
    stamp = (
        os.stat(location).st_mtime_ns if location is not None and os.path.exists(location) else 0
    )
    try:
        return _cached_index(dataset.kind, location, stamp)
    except data.DatasetError as exc:
        raise InvalidDataset(str(exc), code=exc.code) from exc
    except (OSError, ValueError, RuntimeError) as exc:
        raise InvalidDataset(f"cannot read the dataset: {exc}", code="dataset_unreadable") from exc


@functools.lru_cache(maxsize=8)  # a 70k-sample index is a few MB; pages of it come in runs
def _cached_index(kind: str, location: str | None, _stamp: int) -> data.SampleIndex:
    return data.sample_index(kind, location)
