"""Webhooks of an organisation and the deliveries of its deletion requests' state changes.

A state change writes one ``WebhookDelivery`` row per live webhook in the same transaction, and
the delivery task (``workers.webhooks``) is sent only after that transaction commits: an event is
never announced for a change that rolled back, and a lost message is re-sent from the row.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.actors import Actor
from app.audit import service as audit
from app.audit.chain import timestamp
from app.config import get_settings
from app.errors import Unprocessable, WebhookNotFound
from app.orm import DeletionRequest, Job, JobStatus, Webhook, WebhookDelivery, new_id, utcnow
from app.queue import send_after_commit

DELIVER_TASK = "webhooks.deliver"
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def new_secret() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"


def redacted(url: str) -> str:
    """The URL without user:password, query or fragment (where tokens hide), for the audit
    trail, which keys with the audit scope read."""
    parts = urlsplit(url)
    netloc = parts.netloc if "@" not in parts.netloc else "***@" + parts.netloc.rsplit("@", 1)[1]
    hidden = "***" if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=hidden, fragment=""))


class WebhookUrlRefused(Unprocessable):
    code = "webhook_url_refused"


def check_reachable_publicly(url: str) -> None:
    """Refuse a URL whose host is (or resolves to) a loopback, private, link-local or reserved
    address: otherwise any admin could make the workers call into the service's own network."""
    if get_settings().webhooks_may_reach_private:
        return
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise WebhookUrlRefused(f"the webhook host {host!r} does not resolve") from exc
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not address.is_global:
            raise WebhookUrlRefused(
                f"the webhook host {host!r} is a non-public address ({address}); set "
                "NEPENTHE_WEBHOOK_ALLOW_PRIVATE=true to allow internal receivers"
            )


def create(session: Session, actor: Actor, url: str) -> Webhook:
    """A new live webhook of the actor's organisation; its secret is readable only now."""
    check_reachable_publicly(url)
    hook = Webhook(id=new_id(), org_id=actor.org_id, url=url, secret=new_secret())
    session.add(hook)
    audit.record(
        session, actor, "webhook.created", details={"webhook_id": hook.id, "url": redacted(url)}
    )
    return hook


def list_webhooks(session: Session, org_id: str) -> list[Webhook]:
    query = select(Webhook).where(Webhook.org_id == org_id).order_by(Webhook.created_at, Webhook.id)
    return list(session.scalars(query))


def get(session: Session, org_id: str, webhook_id: str) -> Webhook:
    hook = session.get(Webhook, webhook_id)
    if hook is None or hook.org_id != org_id:
        raise WebhookNotFound(f"no webhook {webhook_id!r}")
    return hook


def disable(session: Session, actor: Actor, webhook_id: str) -> Webhook:
    """Stop sending to the webhook (pending deliveries end as failed); idempotent."""
    hook = get(session, actor.org_id, webhook_id)
    if hook.disabled_at is None:
        hook.disabled_at = utcnow()
        audit.record(
            session,
            actor,
            "webhook.disabled",
            details={"webhook_id": hook.id, "url": redacted(hook.url)},
        )
    return hook


def deliveries(
    session: Session, org_id: str, webhook_id: str, status: str | None, limit: int
) -> list[WebhookDelivery]:
    """The webhook's deliveries, newest first."""
    hook = get(session, org_id, webhook_id)
    query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook.id)
    if status:
        query = query.where(WebhookDelivery.status == status)
    query = query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
    return list(session.scalars(query.limit(limit)))


def body_bytes(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed): canonical JSON, the same on every attempt."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def notify(
    session: Session, org_id: str, request_id: str | None, event_type: str, data: dict[str, Any]
) -> list[str]:
    """Queue ``event_type`` to each live webhook of the organisation; sent after commit.

    Returns the new deliveries' ids (empty when the organisation has no live webhook).
    """
    hooks = session.scalars(
        select(Webhook.id).where(Webhook.org_id == org_id, Webhook.disabled_at.is_(None))
    ).all()
    queue = get_settings().webhook_queue
    now = utcnow()
    ids = []
    for hook_id in hooks:
        delivery_id = new_id()
        payload = {
            "id": delivery_id,
            "type": event_type,
            "created_at": timestamp(now),
            "data": data,
        }
        session.add(
            WebhookDelivery(
                id=delivery_id,
                webhook_id=hook_id,
                event_type=event_type,
                request_id=request_id,
                payload=payload,
                status=PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
        send_after_commit(session, DELIVER_TASK, delivery_id, queue)
        ids.append(delivery_id)
    return ids


def notify_job_status(
    session: Session,
    job: Job,
    org_id: str,
    previous: JobStatus | None,
    status: JobStatus,
    reason: str | None,
) -> list[str]:
    """``deletion_request.<status>`` for a job's status change (called by app.jobs.states)."""
    live = session.scalar(
        select(Webhook.id).where(Webhook.org_id == org_id, Webhook.disabled_at.is_(None)).limit(1)
    )
    if live is None:  # the common case: no query beyond this one
        return []
    request = session.execute(
        select(DeletionRequest.caller_reference, DeletionRequest.upstream_request_id).where(
            DeletionRequest.id == job.request_id
        )
    ).one()
    # Read from the database: the transition's UPDATE has not refreshed ``job`` yet.
    output_version_id = session.scalar(select(Job.output_version_id).where(Job.id == job.id))
    data: dict[str, Any] = {
        "request_id": job.request_id,
        "job_id": job.id,
        "status": str(status),
        "previous_status": str(previous) if previous is not None else None,
        "reason": reason,
        "caller_reference": request.caller_reference,
    }
    if request.upstream_request_id is not None:
        data["upstream_request_id"] = request.upstream_request_id
    if output_version_id is not None:
        data["output_version_id"] = output_version_id
    return notify(session, org_id, job.request_id, f"deletion_request.{status}", data)
