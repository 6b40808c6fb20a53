"""Coalescing: the deletion requests that wait on one version of a model run as one joint job.

A model opts in with ``{"max_wait_s", "max_requests"}``. Its requests are accepted with their
job held back, unsent, until ``not_before``: the time of submission plus the wait, and never later
than the due date less ``coalescing_deadline_margin_s``. The sweeper sends a job once its time
has come; the worker that claims it (the joint job) takes every compatible request still waiting
on the same version along (its members: running under the same lease, ``joint_job_id`` naming
the joint job), forgets the union of their data in one run, and records one outcome for all:
one version, and for each request its own certificate. A member never waits past its own
``not_before``: it runs no later than the first of the group whose time came.
"""

from __future__ import annotations

import socket
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from app.config import get_settings
from app.jobs import repository, states
from app.orm import DeletionRequest, Job, JobStatus, Model, utcnow

# The phase of a queued job that waits for others to join it (it has no message yet).
WAITING = "waiting_to_coalesce"


def joinable(request: DeletionRequest) -> bool:
    """Whether a request may share a run: one under a budget of its own does not (the union's
    work is not what its budget was checked against)."""
    return request.budget_epochs is None


def wait_until(model: Model, request: DeletionRequest) -> datetime | None:
    """When the request's job should run at the latest, if it is to wait for others first;
    None: it runs as soon as a worker is free (no coalescing, or no time to wait)."""
    if not model.coalescing or not joinable(request):
        return None
    margin = timedelta(seconds=get_settings().coalescing_deadline_margin_s)
    wanted = request.created_at + timedelta(seconds=float(model.coalescing["max_wait_s"]))
    latest = min(wanted, request.due_at - margin)
    return latest if latest > utcnow() else None


def _joint_key(request: DeletionRequest) -> tuple[Any, ...]:
    """What requests must share to be forgotten in one run: the input version, the data, the
    kind of forget set, and everything the method and its gate are told."""
    return (
        request.model_version_id,
        request.dataset_id,
        request.retain_dataset_id,
        request.forget_classes is not None,
        request.method,
        repr(sorted(request.params.items())),
        repr(sorted((request.acceptance or {}).items())),
        repr(request.reference),
        request.measure_relearn_time,
    )


def join(session: Session, leader: Job, lease: str) -> list[Job]:
    """Move the queued jobs that may run with the just-claimed ``leader`` into its run (at most
    the model's ``max_requests`` in all, oldest first); returns them."""
    request = session.get(DeletionRequest, leader.request_id)
    assert request is not None
    model = repository.model_of_version(session, request.model_version_id)
    if not model.coalescing or not joinable(request):
        return []
    room = int(model.coalescing.get("max_requests", 100)) - 1
    key = _joint_key(request)
    members: list[Job] = []
    for job, waiting in repository.queued_on_version(session, request.model_version_id):
        if len(members) >= room:
            break
        if job.id == leader.id or not joinable(waiting) or _joint_key(waiting) != key:
            continue
        if states.transition(
            session,
            job,
            JobStatus.running,
            reason=f"joined job {leader.id}: one run forgets the data of its requests together",
            values={
                **repository.claimed_values(lease, socket.gethostname()),
                "joint_job_id": leader.id,
            },
        ):
            members.append(job)
    return members


def members(session: Session, leader_id: str, lease: str | None) -> list[Job]:
    """The jobs running inside ``leader_id``'s run (under its lease, when given)."""
    return repository.joined(session, leader_id, lease)
