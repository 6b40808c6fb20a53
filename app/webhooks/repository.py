"""Queries on webhooks and their deliveries: what they find or write, no HTTP, no audit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.orm import DeletionRequest, Job, Webhook, WebhookDelivery

PENDING = "pending"


def insert_webhook(session: Session, hook: Webhook) -> None:
    """Insert now (its server-set columns, such as ``created_at``, are then readable)."""
    session.add(hook)
    session.flush()


def get_webhook(session: Session, webhook_id: str) -> Webhook | None:
    """The webhook by id, whatever its organisation."""
    return session.get(Webhook, webhook_id)


def list_webhooks(session: Session, org_id: str) -> list[Webhook]:
    query = select(Webhook).where(Webhook.org_id == org_id).order_by(Webhook.created_at, Webhook.id)
    return list(session.scalars(query))


def live_webhook_ids(session: Session, org_id: str) -> list[str]:
    """The organisation's webhooks that are not disabled."""
    query = select(Webhook.id).where(Webhook.org_id == org_id, Webhook.disabled_at.is_(None))
    return list(session.scalars(query))


def has_live_webhook(session: Session, org_id: str) -> bool:
    query = select(Webhook.id).where(Webhook.org_id == org_id, Webhook.disabled_at.is_(None))
    return session.scalar(query.limit(1)) is not None


def list_deliveries(
    session: Session, webhook_id: str, status: str | None, limit: int
) -> list[WebhookDelivery]:
    """The webhook's deliveries (only those in ``status`` if given), newest first."""
    query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    if status:
        query = query.where(WebhookDelivery.status == status)
    query = query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
    return list(session.scalars(query.limit(limit)))


def insert_delivery(session: Session, delivery: WebhookDelivery) -> None:
    session.add(delivery)


@dataclass(frozen=True)
class RequestReferences:
    caller_reference: str | None
    upstream_request_id: str | None


def request_references(session: Session, request_id: str) -> RequestReferences:
    """The client's own references of a deletion request."""
    row = session.execute(
        select(DeletionRequest.caller_reference, DeletionRequest.upstream_request_id).where(
            DeletionRequest.id == request_id
        )
    ).one()
    return RequestReferences(row.caller_reference, row.upstream_request_id)


def stored_output_version_id(session: Session, job_id: str) -> str | None:
    """The job's output version as the database holds it now (an UPDATE of the job row in this
    transaction has not refreshed a loaded ``Job``)."""
    return session.scalar(select(Job.output_version_id).where(Job.id == job_id))


def find_delivery(session: Session, delivery_id: str) -> tuple[WebhookDelivery, Webhook] | None:
    """The delivery and its webhook."""
    found = session.execute(
        select(WebhookDelivery, Webhook)
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(WebhookDelivery.id == delivery_id)
    ).one_or_none()
    return None if found is None else (found[0], found[1])


def update_pending(
    session: Session, delivery_id: str, attempts: int, values: dict[str, Any]
) -> bool:
    """Write ``values`` if the delivery is still pending after ``attempts`` attempts (a
    conditional UPDATE: of two workers, one wins). Whether it was written."""
    done = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == PENDING,
            WebhookDelivery.attempts == attempts,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(done.rowcount == 1)  # type: ignore[attr-defined]


def take_attempt(session: Session, delivery_id: str, attempts: int, lease_until: datetime) -> bool:
    """Count one more attempt and make the delivery not due before ``lease_until``, if it is
    still pending after ``attempts`` attempts. Whether this caller took it."""
    values = {"attempts": WebhookDelivery.attempts + 1, "next_attempt_at": lease_until}
    return update_pending(session, delivery_id, attempts, values)


@dataclass(frozen=True)
class DeliveryOrigin:
    webhook_id: str
    org_id: str
    request_id: str | None
    event_type: str


def delivery_origin(session: Session, delivery_id: str) -> DeliveryOrigin:
    """The webhook, organisation, request and event a delivery is for."""
    row = session.execute(
        select(Webhook.id, Webhook.org_id, WebhookDelivery.request_id, WebhookDelivery.event_type)
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(WebhookDelivery.id == delivery_id)
    ).one()
    return DeliveryOrigin(row.id, row.org_id, row.request_id, row.event_type)


def due_pending_ids(session: Session, now: datetime) -> list[str]:
    """Pending deliveries due at ``now``."""
    query = select(WebhookDelivery.id).where(
        WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now
    )
    return list(session.scalars(query))
