"""Model registration, checkpoint versions and their validation against the architecture."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from torch import nn

from app.actors import Actor, Scope
from app.audit import service as audit
from app.config import get_settings
from app.deletions import repository as deletions_repo
from app.errors import (
    ContentSuperseded,
    InsufficientScope,
    InvalidArchitecture,
    InvalidCheckpoint,
    InvalidTransform,
    ModelNotFound,
    ModelVersionNotFound,
    NameTaken,
    TrainingRecordRequired,
    Unprocessable,
    UploadInflatesTooFar,
    VersionConflict,
    VersionSuperseded,
)
from app.models import lineage
from app.models import repository as repo
from app.models.schemas import (
    DriftBudget,
    ModelCreate,
    ModelUpdate,
    ModelVersionRead,
    TransformIn,
)
from app.orm import DeletionRequest, Job, Model, ModelVersion, utcnow
from app.quotas import service as quotas
from app.storage import ArtifactStore, StoredObject, file_sha256
from app.uploads import inflate_limits
from unlearning import architectures, checkpoints
from unlearning.i2i import architectures as i2i_architectures
from unlearning.i2i import masks


def create_model(session: Session, body: ModelCreate, actor: Actor) -> Model:
    channels = body.input_shape[0]
    for field in ("mean", "std"):
        if len(getattr(body.normalization, field)) not in (1, channels):
            raise Unprocessable(f"normalization.{field} needs 1 or {channels} values")
    # Checked before the first query: no database lock is held meanwhile.
    encoder: list[str] | None = None
    transform: dict[str, Any] | None = None
    if body.task == "image_to_image":
        encoder, transform = _check_image_to_image(body)
    else:
        _check_architecture(body)
    if repo.name_exists(session, actor.org_id, body.name):
        raise NameTaken(f"a model named {body.name!r} already exists")
    model = Model(
        org_id=actor.org_id,
        name=body.name,
        task=body.task,
        architecture=body.architecture.name,
        architecture_args=body.architecture.args,
        input_shape=body.input_shape,
        normalization=body.normalization.model_dump(),
        class_names=body.class_names,
        encoder=encoder,
        transform=transform,
        training=body.training.model_dump() if body.training else None,
        coalescing=body.coalescing.model_dump() if body.coalescing else None,
        drift_budget=_checked_budget(body.drift_budget, body.training),
    )
    try:
        repo.insert_model(session, model)
    except IntegrityError as exc:  # a concurrent registration took the name
        raise NameTaken(f"a model named {body.name!r} already exists") from exc
    audit.record(
        session,
        actor,
        "model.registered",
        model_id=model.id,
        details={
            "name": model.name,
            "task": model.task,
            "architecture": model.architecture,
            "encoder": encoder,
            "transform": transform,
        },
    )
    return model


def _check_image_to_image(body: ModelCreate) -> tuple[list[str], dict[str, Any]]:
    """The declared encoder (prefixes) and the transform, once the network is known to build,
    to complete images of its input shape, and to have those parameters in its encoder."""
    try:
        net = i2i_architectures.build_on_meta(
            body.architecture.name, body.input_shape, body.architecture.args
        )
        _check_size(net, body)
        i2i_architectures.check_input_shape(net, body.input_shape)
        encoder = i2i_architectures.resolve_encoder(net, body.encoder)
    except architectures.ArchitectureError as exc:
        raise InvalidArchitecture(str(exc)) from exc
    transform = (body.transform or TransformIn()).model_dump()
    try:
        hidden = masks.hidden_share(masks.Transform(**transform), body.input_shape)
    except ValueError as exc:
        raise InvalidTransform(str(exc)) from exc
    if not 0.0 < hidden < 1.0:
        raise InvalidTransform(
            f"the transform hides {hidden:.0%} of a {body.input_shape[1]}x{body.input_shape[2]} "
            "image: it must hide some pixels and leave some visible"
        )
    return encoder, transform


def network_on_meta(model: Model) -> nn.Module:
    """The registered network without weights, to check uploads against."""
    if model.task == "image_to_image":
        return i2i_architectures.build_on_meta(
            model.architecture, model.input_shape, model.architecture_args
        )
    return architectures.build_on_meta(
        model.architecture,
        len(model.class_names),
        model.architecture_args,
        tuple(model.input_shape),
    )


def _check_architecture(body: ModelCreate) -> None:
    try:
        net = architectures.build_on_meta(
            body.architecture.name,
            len(body.class_names),
            body.architecture.args,
            tuple(body.input_shape),
        )
        _check_size(net, body)
        architectures.check_input_shape(net, tuple(body.input_shape), len(body.class_names))
    except architectures.ArchitectureError as exc:
        raise InvalidArchitecture(str(exc)) from exc


def _check_size(net: nn.Module, body: ModelCreate) -> None:
    label = f"{body.architecture.name!r} with arguments {body.architecture.args}"
    architectures.check_size(net, get_settings().max_model_parameters, label)


def get_model(session: Session, org_id: str, ref: str) -> Model:
    model = repo.find_model(session, org_id, ref)
    if model is None:
        raise ModelNotFound(f"no model {ref!r}")
    return model


def update_model(session: Session, actor: Actor, ref: str, body: ModelUpdate) -> Model:
    """Change what may change on a model (its coalescing, its drift budget), audited with the
    old and new values. Requests already waiting keep the wait they were given."""
    model = repo.lock_model(session, get_model(session, actor.org_id, ref).id)
    assert model is not None
    changes: dict[str, Any] = {}
    if "coalescing" in body.model_fields_set:
        after = body.coalescing.model_dump() if body.coalescing else None
        changes["coalescing"] = {"before": model.coalescing, "after": after}
        model.coalescing = after
    if "drift_budget" in body.model_fields_set:
        after = _checked_budget(body.drift_budget, model.training)
        changes["drift_budget"] = {"before": model.drift_budget, "after": after}
        model.drift_budget = after
    audit.record(session, actor, "model.updated", model_id=model.id, details=changes)
    return model


def _checked_budget(budget: DriftBudget | None, training: Any) -> dict[str, Any] | None:
    """The budget as stored; a retrain needs a training record to retrain from."""
    if budget is None:
        return None
    if budget.retrain and not training:
        raise TrainingRecordRequired(
            "a drift budget with retrain: true needs the model's training record (training: "
            "epochs, optimizer, lr, batch_size) to retrain from; register it, or set retrain "
            "to false"
        )
    return budget.model_dump()


def get_version(session: Session, org_id: str, model_ref: str, number: int) -> ModelVersion:
    model = get_model(session, org_id, model_ref)
    version = repo.find_version(session, model.id, number)
    if version is None:
        raise ModelVersionNotFound(f"model {model.name!r} has no version {number}")
    return version


@dataclass(frozen=True)
class PreparedVersion:
    """A checkpoint validated and written to the store, not yet recorded."""

    model_id: str
    stored: StoredObject
    source_format: str
    parent_version_id: str | None
    # The file as the client sent it (``stored`` is its canonical re-serialisation).
    uploaded_sha256: str
    uploaded_size_bytes: int


def prepare_version(
    read: Session,
    store: ArtifactStore,
    org_id: str,
    model_ref: str,
    upload: Path,
    parent_version_id: str | None,
) -> PreparedVersion:
    """Validate an upload against its model and store it as safetensors.

    Runs on a read-only session: the slow part (parsing, checking, hashing, writing) holds no
    database write lock. Only a valid checkpoint reaches the store. The uploaded file's own
    SHA-256 and size are kept beside the stored file's: the store keeps the canonical
    re-serialisation (``checkpoints.canonical_bytes``), whose bytes differ from the upload's.
    Weights of a superseded version of the organisation are refused before anything is stored
    (``ContentSuperseded``).
    """
    model = get_model(read, org_id, model_ref)
    if parent_version_id is not None:
        parent = repo.get_version(read, parent_version_id)
        if parent is None or parent.model_id != model.id:
            raise ModelVersionNotFound(f"model {model.name!r} has no version {parent_version_id!r}")
    state, source_format = read_and_check(model, upload)
    uploaded_sha256, uploaded_size = file_sha256(upload), upload.stat().st_size
    canonical = checkpoints.canonical_bytes(state)
    sha256 = hashlib.sha256(canonical).hexdigest()
    refuse_superseded_content(read, model, sha256, uploaded_sha256, uploaded_size)
    quotas.check_storage(read, org_id, len(canonical), what="this checkpoint")
    stored = store.put_bytes(canonical, ".safetensors")
    return PreparedVersion(
        model.id, stored, source_format, parent_version_id, uploaded_sha256, uploaded_size
    )


def refuse_superseded_content(
    session: Session, model: Model, sha256: str, uploaded_sha256: str, uploaded_size: int
) -> None:
    """Refuse weights that a superseded version of the organisation has (the same stored or
    uploaded file, under any of its models): they still hold data a deletion removed, and a new
    version of them would be a copy nobody knows to supersede."""
    copy = lineage.superseded_copy(session, model.org_id, {sha256, uploaded_sha256})
    if copy is None:
        return
    owner = repo.get_model(session, copy.model_id)
    raise ContentSuperseded(
        f"these weights are those of version {copy.number} of model "
        f"{owner.name if owner else copy.model_id!r}, which still holds data that deletion "
        f"request {copy.superseded_by_request_id} removed; upload weights without that data "
        "(the version that request produced, or a model trained without it)",
        model_id=model.id,
        sha256=sha256,
        uploaded_sha256=uploaded_sha256,
        uploaded_size_bytes=uploaded_size,
        superseded_version_id=copy.id,
        superseded_model_id=copy.model_id,
        superseded_version_number=copy.number,
        superseded_by_request_id=copy.superseded_by_request_id,
    )


def record_refusal(session: Session, actor: Actor, refused: ContentSuperseded) -> None:
    """Audit a refused upload, committed at once (the route then answers the refusal, which
    rolls back): whatever the upload's transaction began is rolled back first. The event names
    the superseded version and its request, so it is among that request's evidence."""
    session.rollback()
    found = refused.extra
    request_id = found["superseded_by_request_id"]
    request = deletions_repo.get_request(session, request_id) if request_id else None
    audit.record(
        session,
        actor,
        "model_version.upload_refused",
        model_id=found["model_id"],
        model_version_id=found["superseded_version_id"],
        request_id=request_id,
        caller_reference=request.caller_reference if request else None,
        details={"code": refused.code, **found},
    )
    session.commit()


def record_version(session: Session, prepared: PreparedVersion, actor: Actor) -> ModelVersion:
    """Record a prepared checkpoint as the model's next version."""
    # Locked like a finishing job locks it: a child of a version being superseded right now
    # either sees the mark or is seen by it.
    model = repo.lock_model(session, prepared.model_id)
    if model is None:  # deleted between the two steps
        raise ModelNotFound(f"no model {prepared.model_id!r}")
    # Then the organisation, as a finishing job does: weights superseded since prepare_version
    # looked (by a job on any model) are seen now, and a job finishing later sees this version.
    repo.lock_organization(session, model.org_id)
    stored, source_format = prepared.stored, prepared.source_format
    # Nothing to remove from the store when refused here: the same weights canonicalise to the
    # same bytes, so the content key is that of the superseded version's own file.
    refuse_superseded_content(
        session, model, stored.sha256, prepared.uploaded_sha256, prepared.uploaded_size_bytes
    )
    version = add_version(
        session,
        model,
        stored.key,
        stored.sha256,
        stored.size,
        source_format,
        parent_version_id=prepared.parent_version_id,
        produced_by_request_id=None,
        uploaded=(prepared.uploaded_sha256, prepared.uploaded_size_bytes),
    )
    audit.record(
        session,
        actor,
        "model_version.uploaded",
        model_id=model.id,
        model_version_id=version.id,
        details={
            "number": version.number,
            "sha256": version.sha256,
            "size_bytes": version.size_bytes,
            "uploaded_sha256": version.uploaded_sha256,
            "uploaded_size_bytes": version.uploaded_size_bytes,
            "format": source_format,
            "superseded_by_request_id": version.superseded_by_request_id,
        },
    )
    return version


def read_and_check(model: Model, upload: Path) -> tuple[checkpoints.StateDict, str]:
    try:
        net = network_on_meta(model)
    except architectures.ArchitectureError as exc:  # registered before its arguments were bounded
        raise InvalidArchitecture(f"model {model.name!r} cannot be built: {exc}") from exc
    try:
        with upload.open("rb") as fh:
            source_format = checkpoints.sniff_format(fh.read(16))
        # Bounded before anything is inflated: by the settings, and by what the network needs.
        state = checkpoints.read_state_dict(upload, inflate_limits(), checkpoints.byte_budget(net))
    except checkpoints.CheckpointError as exc:
        if exc.code == UploadInflatesTooFar.code:
            raise UploadInflatesTooFar(str(exc)) from exc
        extra = {"problems": exc.problems} if exc.problems else {}
        raise InvalidCheckpoint(str(exc), code=exc.code, **extra) from exc
    problems = checkpoints.fit_problems(net, state)
    if problems:
        raise InvalidCheckpoint(
            f"the weights do not fit architecture {model.architecture!r}: "
            + "; ".join(problems[:3])
            + ("; ..." if len(problems) > 3 else ""),
            code="checkpoint_mismatch",
            problems=problems[:50],
        )
    return state, source_format


def add_version(
    session: Session,
    model: Model,
    key: str,
    sha256: str,
    size: int,
    source_format: str,
    *,
    parent_version_id: str | None,
    produced_by_request_id: str | None,
    uploaded: tuple[str, int] | None = None,
) -> ModelVersion:
    """Insert the next version number; a concurrent insert of the same number is retried.
    ``uploaded``: the SHA-256 and size of the file a client sent (None for a job's output)."""
    parent = repo.get_version(session, parent_version_id) if parent_version_id else None
    for _ in range(5):
        version = ModelVersion(
            model_id=model.id,
            number=repo.next_version_number(session, model.id),
            sha256=sha256,
            size_bytes=size,
            storage_key=key,
            source_format=source_format,
            parent_version_id=parent_version_id,
            produced_by_request_id=produced_by_request_id,
            uploaded_sha256=uploaded[0] if uploaded else None,
            uploaded_size_bytes=uploaded[1] if uploaded else None,
        )
        if parent is not None and parent.superseded_at is not None:
            # Derived from weights that still hold forgotten data: so does this version.
            version.superseded_at = utcnow()
            version.superseded_by_request_id = parent.superseded_by_request_id
        try:
            repo.insert_version(session, version)
            return version
        except IntegrityError:
            continue
    raise VersionConflict("could not allocate a version number under concurrent uploads; retry")


def check_downloadable(version: ModelVersion, actor: Actor, override_reason: str | None) -> None:
    """A superseded version still holds forgotten data: only an admin, giving a reason (which
    the download's audit event keeps), may fetch it."""
    if version.superseded_at is None:
        if override_reason is not None:
            raise Unprocessable("override_reason is only for superseded versions")
        return
    if override_reason is None:
        raise VersionSuperseded(
            f"version {version.number} still holds data that deletion request "
            f"{version.superseded_by_request_id} removed; download the unlearned version, or, as "
            "an admin, pass override_reason",
            superseded_by_request_id=version.superseded_by_request_id,
        )
    if not actor.may(Scope.admin):
        raise InsufficientScope(
            "only an admin key may download a superseded version", required_scope="admin"
        )


def caller_reference_of(session: Session, version: ModelVersion) -> str | None:
    """The caller reference of the deletion request that produced ``version``, if any."""
    if version.produced_by_request_id is None:
        return None
    request = deletions_repo.get_request(session, version.produced_by_request_id)
    return request.caller_reference if request else None


def list_models(session: Session, org_id: str) -> list[Model]:
    return repo.list_models(session, org_id)


def versions_with_content(session: Session, org_id: str, sha256: str) -> list[ModelVersion]:
    """Every version of the organisation's models with the weights of the checkpoint file
    whose SHA-256 is ``sha256``: versions whose stored or uploaded file has it, and every
    version storing the same file as those (the same weights uploaded in another format).
    Oldest first."""
    direct = repo.versions_with_content(session, org_id, {sha256})
    return repo.versions_with_content(session, org_id, {sha256, *(v.sha256 for v in direct)})


def list_versions(session: Session, org_id: str, model_ref: str) -> list[ModelVersion]:
    """Every version of the organisation's model, oldest first."""
    return repo.list_versions(session, get_model(session, org_id, model_ref).id)


def downloadable_version(
    session: Session, actor: Actor, model_ref: str, number: int, override_reason: str | None
) -> ModelVersion:
    """The version whose checkpoint ``actor`` may download now (see check_downloadable)."""
    version = get_version(session, actor.org_id, model_ref, number)
    check_downloadable(version, actor, override_reason)
    return version


def record_download(
    session: Session, actor: Actor, version: ModelVersion, override_reason: str | None
) -> None:
    """Audit a checkpoint download (a superseded one with the admin's reason)."""
    details: dict[str, Any] = {"number": version.number, "sha256": version.sha256}
    if override_reason is not None:
        details |= {
            "superseded_by_request_id": version.superseded_by_request_id,
            "override_reason": override_reason,
        }
    audit.record(
        session,
        actor,
        "model_version.downloaded_superseded" if override_reason else "model_version.downloaded",
        model_id=version.model_id,
        model_version_id=version.id,
        request_id=version.produced_by_request_id,
        caller_reference=caller_reference_of(session, version),
        details=details,
    )


def version_of_request(session: Session, request: DeletionRequest | None) -> ModelVersion | None:
    """The version a deletion request starts from (None for no request, or a lost version)."""
    return repo.get_version(session, request.model_version_id) if request is not None else None


def output_of(session: Session, job: Job) -> ModelVersion | None:
    """The version a job produced, if it produced one."""
    return repo.get_version(session, job.output_version_id) if job.output_version_id else None


def download_url(version: ModelVersion) -> str:
    return f"/v1/models/{version.model_id}/versions/{version.number}/checkpoint"


def version_read(version: ModelVersion) -> ModelVersionRead:
    read = ModelVersionRead.model_validate(version)
    read.download_url = download_url(version)
    return read
