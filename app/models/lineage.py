"""Version lineage: which versions derive from which, and supersession once data is forgotten."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from app.models import repository as repo
from app.orm import ModelVersion


def descendants(session: Session, root: ModelVersion) -> list[ModelVersion]:
    """Every version derived from ``root`` (children, their children, ...), oldest first."""
    versions = repo.list_versions(session, root.model_id)
    children: dict[str, list[ModelVersion]] = {}
    for v in versions:
        if v.parent_version_id is not None:
            children.setdefault(v.parent_version_id, []).append(v)
    found: list[ModelVersion] = []
    frontier = [root.id]
    while frontier:
        kids = [c for parent in frontier for c in children.get(parent, [])]
        found.extend(kids)
        frontier = [c.id for c in kids]
    return sorted(found, key=lambda v: v.number)


def ancestors(session: Session, version: ModelVersion) -> list[ModelVersion]:
    """The versions ``version`` derives from: its parent, the parent's parent, ... (nearest
    first)."""
    found: list[ModelVersion] = []
    current = version
    while current.parent_version_id is not None:
        parent = repo.get_version(session, current.parent_version_id)
        if parent is None or any(v.id == parent.id for v in found):  # a broken or looping chain
            break
        found.append(parent)
        current = parent
    return found


def still_holding(
    session: Session, source: ModelVersion, output: ModelVersion | None
) -> list[ModelVersion]:
    """The versions that still hold data a request forgot from ``source``: the source and
    everything derived from it, every version of the organisation with the same weights (a
    copy uploaded under this model or another: the same stored or uploaded file) and everything
    derived from those, except the request's own output and what derives from that. The source
    and its descendants come first, as before copies were looked for."""
    clean: set[str] = set()
    if output is not None:
        clean = {output.id, *(v.id for v in descendants(session, output))}
    model = repo.get_model(session, source.model_id)
    holding: dict[str, ModelVersion] = {}
    frontier = [source]
    while frontier:
        found = []
        for root in frontier:
            for v in [root, *descendants(session, root)]:
                if v.id not in clean and v.id not in holding:
                    holding[v.id] = v
                    found.append(v)
        if model is None:
            break
        frontier = [
            v
            for v in repo.versions_with_content(session, model.org_id, content_of(found))
            if v.id not in holding and v.id not in clean
        ]
    return list(holding.values())


def content_of(versions: list[ModelVersion]) -> set[str]:
    """The SHA-256 digests that name the versions' weights: stored and uploaded file."""
    return {d for v in versions for d in (v.sha256, v.uploaded_sha256) if d is not None}


def superseded_copy(session: Session, org_id: str, digests: set[str]) -> ModelVersion | None:
    """A superseded version of the organisation whose stored or uploaded file has one of
    ``digests``: weights with that content still hold data a deletion removed, whichever of the
    organisation's models they are uploaded under. The oldest such version, or None."""
    matches = repo.versions_with_content(session, org_id, digests)
    return next((v for v in matches if v.superseded_at is not None), None)


def supersede(
    session: Session,
    source: ModelVersion,
    output: ModelVersion,
    request_id: str,
    at: datetime,
) -> list[ModelVersion]:
    """Mark the versions that still hold the forgotten data (``still_holding``: copies of the
    weights under other models included) as superseded by ``request_id``.

    A version superseded earlier keeps the request that superseded it first. (An output made
    from an already superseded source was marked when it was added: it still holds the earlier
    request's data.)
    """
    marked = []
    for version in still_holding(session, source, output):
        if version.superseded_at is None:
            version.superseded_at, version.superseded_by_request_id = at, request_id
            marked.append(version)
    return marked
