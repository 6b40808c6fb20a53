"""Deletion requests: validate, record, create the job, enqueue after commit."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import queue
from app.actors import Actor
from app.audit import service as audit
from app.datasets import service as datasets
from app.db import session_scope
from app.deletions import clock, evidence, methods
from app.deletions import repository as repo
from app.deletions.repository import RequestFilter
from app.deletions.schemas import (
    DeletionRequestCreate,
    DeletionRequestRead,
    ExtensionRead,
    VersionContainment,
)
from app.errors import (
    CertificateNotIssued,
    DeletionRequestNotFound,
    IdempotencyKeyReused,
    IncompatibleDataset,
    InputSuperseded,
    InvalidDataset,
    InvalidForgetSet,
    InvalidRetainSet,
    ModelVersionNotFound,
    OptionUnsupportedForModel,
    ReceiptNotIssued,
    ServiceError,
    UnknownClass,
    UnknownSample,
)
from app.jobs import coalescing, states
from app.jobs import service as jobs
from app.jobs.schemas import JobRead
from app.models import lineage
from app.models import repository as models_repo
from app.orm import (
    Dataset,
    DeletionRequest,
    DueDateExtension,
    Job,
    JobArtifact,
    JobStatus,
    Model,
    ModelVersion,
    new_id,
    utcnow,
)
from app.quotas import service as quotas
from unlearning import data
from unlearning.jobs import forget_mask
from unlearning.methods import costs

__all__ = ["InputSuperseded", "RequestFilter"]  # re-exported: their homes moved


def body_digest(body: DeletionRequestCreate) -> str:
    # Only what the client sent: an explicit null threshold (check off) differs from an omitted
    # one (the default applies), so the two must not replay each other.
    sent = body.model_dump(mode="json", exclude_unset=True)
    canonical = json.dumps(sent, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def submit(
    session: Session, body: DeletionRequestCreate, idempotency_key: str | None, actor: Actor
) -> tuple[DeletionRequest, bool]:
    """Returns the request and whether it was created now (False: an idempotent replay)."""
    digest = body_digest(body)
    # Before the first query of ``session``, which takes SQLite's write lock: a large dataset
    # loads in seconds, and no other write should wait for that.
    preloaded = _preload_train(body, actor)
    if idempotency_key is not None:
        existing = _replay(session, actor.org_id, idempotency_key, digest)
        if existing is not None:
            return existing, False
    version, model, dataset = _targets(session, actor.org_id, body)
    forget_classes: list[int] | None = None
    forget_samples: list[str] | None = None
    train = preloaded  # read once, for the sample ids and the budget
    if body.forget_classes is not None:
        forgets = "classes"
        forget_classes = _resolve_classes(_classes_of(model, dataset), body.forget_classes)
    else:
        train = train or _open_train(dataset, "to check the sample ids")
        forgets = "samples"
        forget_samples = _check_samples(dataset, train, body.forget_samples or [])
    method = methods.choose(body.method, forgets, model.task)
    family = methods.family_of(model)
    params = methods.resolve_params(
        method, methods.with_budget(method, body.params, body.budget_epochs), family
    )
    if forget_classes is not None:
        methods.check_memory(method.name, params, len(forget_classes), model.input_shape)
    _check_options(body, model)
    if body.budget_epochs is not None:
        train = train or _open_train(dataset, "to estimate the work")
        sizes = split_sizes(train, forget_classes, forget_samples)
        methods.check_budget(method, params, sizes, body.budget_epochs)
    retain_dataset = None
    if body.retain_dataset_id is not None:
        retain_dataset = datasets.get(session, actor.org_id, body.retain_dataset_id)
        if retain_dataset.id == dataset.id:
            # Its whole training split would be kept, the forget set included.
            raise InvalidRetainSet(
                "a proxy retain set must be another dataset: this one holds the data to forget; "
                "omit retain_dataset_id to retain the rest of the training data"
            )
    given = body.acceptance.model_dump(exclude_unset=True) if body.acceptance else None
    thresholds = methods.resolve_acceptance(given, forgets, model.task)
    reference = methods.resolve_reference(
        body.reference.model_dump() if body.reference else None, model.training
    )
    retain_id = retain_dataset.id if retain_dataset else None
    sizes = cost_sizes(dataset, train, forget_classes, forget_samples)
    methods.check_least_budget(method, params, sizes)
    estimate = methods.job_estimate(method, params, reference, sizes)
    quotas.check_submission(session, actor.org_id, version.size_bytes, estimate)
    received = utcnow()
    request = DeletionRequest(
        # The id is set here, not at INSERT: the receipt signed below must name it.
        id=new_id(),
        org_id=actor.org_id,
        model_version_id=version.id,
        dataset_id=dataset.id,
        retain_dataset_id=retain_id,
        forget_classes=forget_classes,
        forget_samples=forget_samples,
        method=method.name,
        params=params,
        acceptance=thresholds,
        reference=reference,
        measure_relearn_time=body.measure_relearn_time,
        budget_epochs=body.budget_epochs,
        caller_reference=body.caller_reference,
        upstream_request_id=body.upstream_request_id,
        idempotency_key=idempotency_key,
        body_sha256=digest,
        forget_spec_salt=(salt := evidence.new_salt()),
        forget_spec_sha256=evidence.forget_spec_sha256(
            dataset.id, retain_id, forget_classes, forget_samples, salt
        ),
        created_at=received,
        due_at=clock.due_at(received),
    )
    receipt = evidence.issue_receipt(request, version)
    try:
        repo.insert_request(session, request)
    except IntegrityError:
        # Another request with the same key committed between our check and our insert.
        assert idempotency_key is not None
        existing = _replay(session, actor.org_id, idempotency_key, digest)
        if existing is None:
            raise
        return existing, False
    job = Job(request_id=request.id)
    waits_until = coalescing.wait_until(model, request)
    if waits_until is not None:  # sent by the sweeper then, unless a joint run takes it first
        job.not_before, job.phase = waits_until, coalescing.WAITING
    repo.insert_job(session, job)
    audit.record(
        session,
        actor,
        "deletion_request.created",
        model_id=model.id,
        model_version_id=version.id,
        dataset_id=dataset.id,
        request_id=request.id,
        job_id=job.id,
        caller_reference=body.caller_reference,
        details={
            "upstream_request_id": body.upstream_request_id,
            "forget_spec_sha256": request.forget_spec_sha256,
            "input_checkpoint_sha256": version.sha256,
            "due_at": request.due_at.isoformat(),
            "receipt_signature": receipt["signature"]["value"],
            "forget_classes": forget_classes,
            "forget_class_names": _class_names(model, dataset, forget_classes),
            "retain_dataset_id": request.retain_dataset_id,
            "forget_samples_count": len(forget_samples) if forget_samples else None,
            "method": method.name,
            "params": params,
            "acceptance": thresholds,
            "reference": reference,
            "measure_relearn_time": body.measure_relearn_time,
            "budget_epochs": body.budget_epochs,
            "idempotency_key": idempotency_key,
            "coalescing_until": waits_until.isoformat() if waits_until else None,
        },
    )
    states.record_created(session, job, actor, reason="deletion request accepted")
    if waits_until is None:
        queue.enqueue_after_commit(session, job.id)
    return request, True


def _replay(session: Session, org_id: str, key: str, digest: str) -> DeletionRequest | None:
    existing = repo.find_by_idempotency_key(session, org_id, key)
    if existing is not None and existing.body_sha256 != digest:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was already used with a different request body"
        )
    return existing


def _check_options(body: DeletionRequestCreate, model: Model) -> None:
    """Options that only one kind of model can honour are refused for the other."""
    if model.task == "image_to_image":
        unsupported = {
            "reference": body.reference is not None,
            "measure_relearn_time": body.measure_relearn_time,
        }
        named = [k for k, given in unsupported.items() if given]
        if named:
            raise OptionUnsupportedForModel(
                f"{', '.join(named)} apply to classifiers only (a retrained reference and relearn "
                "time are classification measurements)",
                unsupported=named,
            )
    elif body.retain_dataset_id is not None:
        raise OptionUnsupportedForModel(
            "retain_dataset_id (a proxy retain set) applies to image_to_image models only",
            unsupported=["retain_dataset_id"],
        )


def _classes_of(model: Model, dataset: Dataset) -> list[str]:
    """A classifier's own classes; an image-to-image model has none: the dataset's."""
    return dataset.class_names if model.task == "image_to_image" else model.class_names


def _class_names(model: Model, dataset: Dataset, classes: list[int] | None) -> list[str] | None:
    if not classes:
        return None
    names = _classes_of(model, dataset)
    return [names[c] for c in classes]


def _targets(
    session: Session, org_id: str, body: DeletionRequestCreate
) -> tuple[ModelVersion, Model, Dataset]:
    version = models_repo.get_version(session, body.model_version_id)
    model = models_repo.get_model(session, version.model_id) if version is not None else None
    if version is None or model is None or model.org_id != org_id:
        raise ModelVersionNotFound(f"no model version {body.model_version_id!r}")
    if version.superseded_at is not None:
        raise InputSuperseded(
            f"version {version.number} still holds data that deletion request "
            f"{version.superseded_by_request_id} removed; submit against the version that "
            "request produced",
            superseded_by_request_id=version.superseded_by_request_id,
        )
    dataset = datasets.get(session, org_id, body.dataset_id)
    if model.task == "classification" and len(dataset.class_names) != len(model.class_names):
        raise IncompatibleDataset(
            f"dataset {dataset.name!r} has {len(dataset.class_names)} classes, model "
            f"{model.name!r} has {len(model.class_names)}"
        )
    return version, model, dataset


def _resolve_classes(class_names: list[str], wanted: list[int | str]) -> list[int]:
    resolved: list[int] = []
    for item in wanted:
        if isinstance(item, int):
            if not 0 <= item < len(class_names):
                raise UnknownClass(
                    f"class index {item} is out of range: there are {len(class_names)} classes",
                    unknown=item,
                )
            index = item
        elif item in class_names:
            index = class_names.index(item)
        else:
            raise UnknownClass(
                f"there is no class named {item!r}; classes: {class_names[:20]}", unknown=item
            )
        if index not in resolved:
            resolved.append(index)
    if len(resolved) >= len(class_names):
        raise InvalidForgetSet("forgetting every class leaves nothing to retain")
    return sorted(resolved)


def _preload_train(body: DeletionRequestCreate, actor: Actor) -> data.ImageSource | None:
    """The training split, when the request needs it (sample ids, a budget), read in a session
    of its own that holds no write lock; None when it does not, or its targets are not found
    (the write session then reports that)."""
    if body.forget_samples is None and body.budget_epochs is None:
        return None
    with session_scope(read_only=True) as reader:
        try:
            _, _, dataset = _targets(reader, actor.org_id, body)
        except ServiceError:
            return None
    try:
        return _open_train(dataset, "")
    except InvalidDataset:
        return None  # refused below, in the order of the other checks


def preload_train_of(
    org_id: str, request_id: str, budget_epochs: float | None
) -> data.ImageSource | None:
    """The training split of a request about to run again under a budget or over samples,
    read before the write session takes its lock (as at submission); None when neither."""
    with session_scope(read_only=True) as reader:
        request = repo.get_request(reader, request_id, False)
        if request is None or request.org_id != org_id:
            return None
        if budget_epochs is None and request.budget_epochs is None and not request.forget_samples:
            return None
        dataset = reader.get(Dataset, request.dataset_id)
    if dataset is None:
        return None
    try:
        return _open_train(dataset, "")
    except InvalidDataset:
        return None  # open_train reports it in the write session


def open_train(session: Session, request: DeletionRequest) -> data.ImageSource:
    dataset = session.get(Dataset, request.dataset_id)
    assert dataset is not None
    return _open_train(dataset, "to estimate the work")


def split_sizes(
    train: data.ImageSource, forget_classes: list[int] | None, forget_samples: list[str] | None
) -> costs.Sizes:
    """The training split's counts a method's cost estimate reads."""
    forget = forget_mask(train, forget_classes, forget_samples)
    retain_targets = np.asarray(train.targets)[~forget]
    return costs.sizes_of(len(train), int(forget.sum()), retain_targets, len(forget_classes or ()))


def cost_sizes(
    dataset: Dataset,
    train: data.ImageSource | None,
    forget_classes: list[int] | None,
    forget_samples: list[str] | None,
) -> costs.Sizes:
    """The counts of the job's cost estimate: exact when the split was read (sample ids, a
    budget), else from the dataset's recorded counts with its classes taken as equal."""
    if train is not None:
        return split_sizes(train, forget_classes, forget_samples)
    classes = len(dataset.class_names)
    return costs.balanced_sizes(dataset.train_count, classes, len(forget_classes or ()))


def _open_train(dataset: Dataset, purpose: str) -> data.ImageSource:
    try:
        return data.open_split(dataset.kind, datasets.resolve_location(dataset.location), "train")
    except data.DatasetError as exc:
        raise InvalidDataset(
            f"dataset {dataset.name!r} cannot be read {purpose}: {exc}", code=exc.code
        ) from exc


def _check_samples(dataset: Dataset, train: data.ImageSource, sample_ids: list[str]) -> list[str]:
    """The distinct sample ids, in order, once each is known to be in ``train``."""
    known = set(train.ids)
    missing = [s for s in sample_ids if s not in known]
    if missing:
        raise UnknownSample(
            f"{len(missing)} sample ids are not in the training split of {dataset.name!r}, "
            f"e.g. {missing[:5]}",
            unknown=missing[:20],
        )
    distinct = list(dict.fromkeys(sample_ids))
    if len(distinct) >= len(known):
        raise InvalidForgetSet("forgetting every training sample leaves nothing to retain")
    return distinct


def get(
    session: Session, org_id: str, request_id: str, for_update: bool = False
) -> DeletionRequest:
    request = repo.get_request(session, request_id, for_update)
    if request is None or request.org_id != org_id:
        raise DeletionRequestNotFound(f"no deletion request {request_id!r}")
    return request


def receipt_of(request: DeletionRequest) -> dict[str, Any]:
    """The receipt signed when the request was accepted."""
    if request.receipt is None:
        raise ReceiptNotIssued("this request was accepted before receipts were issued")
    return request.receipt


def certificate_of(request: DeletionRequest) -> dict[str, Any]:
    """The certificate signed when the request's job succeeded."""
    if request.certificate is None:
        raise CertificateNotIssued(
            "a certificate is issued when the request's job succeeds; it has not"
        )
    return request.certificate


def list_requests(
    session: Session,
    org_id: str,
    where: RequestFilter,
    after_id: str | None,
    limit: int,
    soonest_due_first: bool = False,
) -> list[DeletionRequest]:
    """The organisation's requests in the order received (or by deadline), after the request
    ``after_id``."""
    after = get(session, org_id, after_id) if after_id is not None else None
    return repo.list_requests(session, org_id, where, after, clock.CLOSED, limit, soonest_due_first)


def extend(
    session: Session, actor: Actor, request_id: str, months: int, reason: str
) -> DeletionRequest:
    # Locked: two extensions at once must not both fit under the limit.
    request = get(session, actor.org_id, request_id, for_update=True)
    clock.extend(session, actor, request, jobs.for_request(session, request.id), months, reason)
    return request


def containment(session: Session, request: DeletionRequest) -> list[VersionContainment]:
    """The request's input version and everything derived from it, then the organisation's other
    versions with the same weights and what derives from those, each marked with whether it
    still holds the data the request names (only the request's output and what derives from
    it do not)."""
    source = models_repo.get_version(session, request.model_version_id)
    assert source is not None
    job = jobs.for_request(session, request.id)
    output = (
        models_repo.get_version(session, job.output_version_id) if job.output_version_id else None
    )
    holding = lineage.still_holding(session, source, output)
    every = [source, *lineage.descendants(session, source)]
    # Copies of the weights (under this model or another) and what derives from them.
    every += [v for v in holding if v.id not in {e.id for e in every}]
    held = {v.id for v in holding}
    return [
        VersionContainment(
            id=v.id,
            model_id=v.model_id,
            number=v.number,
            sha256=v.sha256,
            uploaded_sha256=v.uploaded_sha256,
            parent_version_id=v.parent_version_id,
            produced_by_request_id=v.produced_by_request_id,
            contains_forgotten_data=v.id in held,
            superseded_at=v.superseded_at,
            superseded_by_request_id=v.superseded_by_request_id,
        )
        for v in every
    ]


def to_read(session: Session, request: DeletionRequest) -> DeletionRequestRead:
    return to_read_many(session, [request])[0]


def accepted_read(session: Session, request: DeletionRequest) -> DeletionRequestRead:
    """A request this session has just accepted, as the API shows it, from the rows the
    submission already holds: a new request has no extension, no artifact and no output yet,
    so only its job is read again."""
    version = session.get(ModelVersion, request.model_version_id)
    dataset = session.get(Dataset, request.dataset_id)
    assert version is not None and dataset is not None  # checked by the submission
    model = session.get(Model, version.model_id)
    assert model is not None
    job = jobs.job_read(jobs.for_request(session, request.id), None, [])
    return _read(request, model, dataset, job, [])


def to_read_many(session: Session, requests: list[DeletionRequest]) -> list[DeletionRequestRead]:
    """Requests as the API shows them, with a fixed number of queries whatever their count (a
    page of 100 would otherwise cost some 700 statements)."""
    if not requests:
        return []
    ids = [r.id for r in requests]
    job_of = {j.request_id: j for j in repo.rows_with(session, Job, Job.request_id, ids)}
    version_ids = {r.model_version_id for r in requests} | {
        j.output_version_id for j in job_of.values() if j.output_version_id
    }
    versions = {
        v.id: v for v in repo.rows_with(session, ModelVersion, ModelVersion.id, version_ids)
    }
    model_ids = {v.model_id for v in versions.values()}
    models = {m.id: m for m in repo.rows_with(session, Model, Model.id, model_ids)}
    dataset_ids = {r.dataset_id for r in requests}
    datasets = {d.id: d for d in repo.rows_with(session, Dataset, Dataset.id, dataset_ids)}
    extensions: dict[str, list[DueDateExtension]] = {}
    for e in repo.rows_with(session, DueDateExtension, DueDateExtension.request_id, ids):
        extensions.setdefault(e.request_id, []).append(e)
    files: dict[str, list[JobArtifact]] = {}
    for a in repo.rows_with(
        session, JobArtifact, JobArtifact.job_id, [j.id for j in job_of.values()]
    ):
        files.setdefault(a.job_id, []).append(a)
    reads = []
    for request in requests:
        job = job_of[request.id]
        model = models[versions[request.model_version_id].model_id]
        output = versions.get(job.output_version_id) if job.output_version_id else None
        reads.append(
            _read(
                request,
                model,
                datasets[request.dataset_id],
                jobs.job_read(job, output, files.get(job.id, [])),
                extensions.get(request.id, []),
            )
        )
    return reads


def _certified(request: DeletionRequest) -> bool:
    """Whether a certificate was issued, without reading it where a listing left it unread."""
    if request.certified is not None:
        return request.certified
    return request.certificate is not None


def _read(
    request: DeletionRequest,
    model: Model,
    dataset: Dataset,
    job: JobRead,
    extensions: list[DueDateExtension],
) -> DeletionRequestRead:
    classes: list[int] | None = request.forget_classes
    is_open = clock.is_open(job.status, request.closed_at)
    completed = job.finished_at if job.status == JobStatus.succeeded else None
    base = f"/v1/deletion-requests/{request.id}"
    return DeletionRequestRead(
        id=request.id,
        model_version_id=request.model_version_id,
        model_id=model.id,
        dataset_id=request.dataset_id,
        retain_dataset_id=request.retain_dataset_id,
        forget_classes=classes,
        forget_class_names=_class_names(model, dataset, classes),
        forget_samples_count=len(request.forget_samples) if request.forget_samples else None,
        method=request.method,
        params=request.params,
        acceptance=request.acceptance,
        reference=request.reference,
        measure_relearn_time=request.measure_relearn_time,
        budget_epochs=request.budget_epochs,
        caller_reference=request.caller_reference,
        upstream_request_id=request.upstream_request_id,
        forget_spec_sha256=request.forget_spec_sha256,
        created_at=request.created_at,
        received_at=request.created_at,
        due_at=request.due_at,
        open=is_open,
        overdue=is_open and utcnow() > request.due_at,
        completed_at=completed,
        extensions=[ExtensionRead.model_validate(e) for e in extensions],
        closed_at=request.closed_at,
        closed_by=request.closed_by,
        close_reason=request.close_reason,
        satisfied_by_request_id=request.satisfied_by_request_id,
        receipt_url=f"{base}/receipt",
        certificate_url=f"{base}/certificate" if _certified(request) else None,
        job=job,
    )
