"""Audit events are written with the transaction that records them, and only then."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.actors import Actor
from app.audit import service as audit
from app.auth.service import create_org
from app.db import session_scope
from app.orm import AuditEvent

pytestmark = pytest.mark.parametrize("service_env", ["embedded", "production"], indirect=True)


def actions(org_id: str) -> list[str]:
    with session_scope(read_only=True) as session:
        query = select(AuditEvent.action).where(AuditEvent.org_id == org_id)
        return list(session.scalars(query.order_by(AuditEvent.seq)))


def record_then_fail(actor: Actor) -> None:
    with session_scope() as session:
        audit.record(session, actor, "rolled.back")
        raise RuntimeError


def record_in_failed_savepoint(session: Session, actor: Actor) -> None:
    with session.begin_nested():
        audit.record(session, actor, "inside.failed.savepoint")
        raise RuntimeError


def test_events_of_rolled_back_work_are_never_written(service_env):
    with session_scope() as session:
        org = create_org(session, "initech", "test")
    actor = Actor(org.id, "test")
    with session_scope() as session:  # an event as the first thing a unit of work does
        audit.record(session, actor, "first")
    with pytest.raises(RuntimeError):
        record_then_fail(actor)
    with session_scope() as session:
        audit.record(session, actor, "kept")
        with pytest.raises(RuntimeError):
            record_in_failed_savepoint(session, actor)
        with session.begin_nested():
            audit.record(session, actor, "inside.released.savepoint")
    assert actions(org.id) == ["organization.created", "first", "kept", "inside.released.savepoint"]
    with session_scope(read_only=True) as session:
        assert audit.verify(session, org.id).ok
        count = select(func.count()).select_from(AuditEvent).where(AuditEvent.org_id == org.id)
        assert session.scalar(count) == 4
