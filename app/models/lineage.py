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
    everything derived from it, except the request's own output and what derives from that."""
    clean: set[str] = set()
    if output is not None:
        clean = {output.id, *(v.id for v in descendants(session, output))}
    return [v for v in [source, *descendants(session, source)] if v.id not in clean]


def supersede(
    session: Session,
    source: ModelVersion,
    output: ModelVersion,
    request_id: str,
    at: datetime,
) -> list[ModelVersion]:
    """Mark the versions that still hold the forgotten data as superseded by ``request_id``.

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
