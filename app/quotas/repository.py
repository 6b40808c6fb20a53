"""Queries the quotas are computed from: existing rows only (requests, jobs, versions,
artifacts, datasets), so every API process and worker sees the same figures."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.orm import (
    Dataset,
    DeletionRequest,
    Job,
    JobArtifact,
    JobStatus,
    Model,
    ModelVersion,
    Organization,
)

STORE_PREFIX = "store:"  # an uploaded dataset's location (app.datasets.service.STORE_PREFIX)


def lock_org(session: Session, org_id: str) -> None:
    """Hold the organisation's row until commit: two submissions (or claims) of one
    organisation count each other's rows, never both pass a limit (SQLite: a no-op, its
    writers are serialised already). FOR NO KEY UPDATE: see ``app.audit.chain``."""
    session.execute(
        select(Organization.id).where(Organization.id == org_id).with_for_update(key_share=True)
    )


def accepted_since(session: Session, org_id: str, since: datetime) -> list[datetime]:
    """When the organisation's requests received after ``since`` were accepted, oldest first
    (the index on (org_id, created_at) serves it)."""
    query = (
        select(DeletionRequest.created_at)
        .where(DeletionRequest.org_id == org_id, DeletionRequest.created_at > since)
        .order_by(DeletionRequest.created_at)
    )
    return list(session.scalars(query))


def jobs_by_org(session: Session, statuses: list[JobStatus]) -> dict[tuple[str, str], int]:
    """{(org id, status): jobs} for the given statuses (the status column is indexed). A job
    joined to another's run (app.jobs.coalescing) is not counted: it is part of that run."""
    query = (
        select(DeletionRequest.org_id, Job.status, func.count())
        .join(DeletionRequest, DeletionRequest.id == Job.request_id)
        .where(Job.status.in_(statuses), Job.joint_job_id.is_(None))
        .group_by(DeletionRequest.org_id, Job.status)
    )
    return {(org, str(status)): int(n) for org, status, n in session.execute(query)}


def org_jobs(session: Session, org_id: str, status: JobStatus) -> int:
    query = (
        select(func.count())
        .select_from(Job)
        .join(DeletionRequest, DeletionRequest.id == Job.request_id)
        .where(DeletionRequest.org_id == org_id, Job.status == status)
        .where(Job.joint_job_id.is_(None))  # a joined job is part of another job's run
    )
    return int(session.scalar(query) or 0)


def recorded_bytes(session: Session, org_id: str | None = None) -> dict[str, int]:
    """{org id: bytes of its checkpoint versions and job artifacts}, one organisation's or all."""
    versions = (
        select(Model.org_id, func.sum(ModelVersion.size_bytes))
        .join(Model, Model.id == ModelVersion.model_id)
        .group_by(Model.org_id)
    )
    artifacts = (
        select(DeletionRequest.org_id, func.sum(JobArtifact.size_bytes))
        .join(Job, Job.id == JobArtifact.job_id)
        .join(DeletionRequest, DeletionRequest.id == Job.request_id)
        .group_by(DeletionRequest.org_id)
    )
    if org_id is not None:
        versions = versions.where(Model.org_id == org_id)
        artifacts = artifacts.where(DeletionRequest.org_id == org_id)
    total: dict[str, int] = {}
    for query in (versions, artifacts):
        for org, n in session.execute(query):
            total[org] = total.get(org, 0) + int(n or 0)
    return total


def uploaded_dataset_keys(session: Session, org_id: str | None = None) -> list[tuple[str, str]]:
    """(org id, store key) of every uploaded dataset (those kept in the checkpoint store)."""
    query = select(Dataset.org_id, Dataset.location).where(
        Dataset.location.startswith(STORE_PREFIX)
    )
    if org_id is not None:
        query = query.where(Dataset.org_id == org_id)
    return [(org, str(loc).removeprefix(STORE_PREFIX)) for org, loc in session.execute(query)]
