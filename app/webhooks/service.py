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
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy.orm import Session

from app.actors import Actor, worker_actor
from app.audit import service as audit
from app.audit.chain import timestamp
from app.config import get_settings
from app.errors import WebhookNotFound, WebhookUrlRefused
from app.orm import Job, JobStatus, Webhook, WebhookDelivery, new_id, utcnow
from app.queue import send_after_commit
from app.webhooks import repository as repo
from app.webhooks.repository import PENDING

DELIVER_TASK = "webhooks.deliver"
DELIVERED, FAILED = "delivered", "failed"  # and repository.PENDING
RETRYING = "retrying"  # an attempt's outcome, the delivery still pending


def new_secret() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"


def redacted(url: str) -> str:
    """The URL without user:password, query or fragment (where tokens hide), for the audit
    trail, which keys with the audit scope read."""
    parts = urlsplit(url)
    netloc = parts.netloc if "@" not in parts.netloc else "***@" + parts.netloc.rsplit("@", 1)[1]
    hidden = "***" if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=hidden, fragment=""))


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# IPv6 forms that carry an IPv4 address a router or the host may turn back into IPv4: the
# well-known NAT64 prefix, 6to4, and the deprecated IPv4-compatible form (::a.b.c.d).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIXTOFOUR = ipaddress.ip_network("2002::/16")
_COMPATIBLE = ipaddress.ip_network("::/96")


def embeds_ipv4(address: IpAddress) -> bool:
    if not isinstance(address, ipaddress.IPv6Address):
        return False
    return (
        address.ipv4_mapped is not None
        or address.teredo is not None
        or any(address in net for net in (_NAT64, _SIXTOFOUR, _COMPATIBLE))
    )


def check_reachable_publicly(url: str) -> list[IpAddress]:
    """The addresses the URL's host resolves to, once each is known to be public: a loopback,
    private, link-local or reserved address (or an IPv6 form embedding an IPv4 one) is refused,
    otherwise any admin could make the workers call into the service's own network. With
    NEPENTHE_WEBHOOK_ALLOW_PRIVATE nothing is checked, and no address is returned (the send
    then resolves the name itself)."""
    if get_settings().webhooks_may_reach_private:
        return []
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise WebhookUrlRefused(f"the webhook host {host!r} does not resolve") from exc
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    for address in addresses:
        if not address.is_global or embeds_ipv4(address):
            raise WebhookUrlRefused(
                f"the webhook host {host!r} is a non-public address ({address}); set "
                "NEPENTHE_WEBHOOK_ALLOW_PRIVATE=true to allow internal receivers"
            )
    return addresses


def create(session: Session, actor: Actor, url: str) -> Webhook:
    """A new live webhook of the actor's organisation; its secret is readable only now."""
    check_reachable_publicly(url)
    hook = Webhook(id=new_id(), org_id=actor.org_id, url=url, secret=new_secret())
    repo.insert_webhook(session, hook)
    audit.record(
        session, actor, "webhook.created", details={"webhook_id": hook.id, "url": redacted(url)}
    )
    return hook


def list_webhooks(session: Session, org_id: str) -> list[Webhook]:
    return repo.list_webhooks(session, org_id)


def get(session: Session, org_id: str, webhook_id: str) -> Webhook:
    hook = repo.get_webhook(session, webhook_id)
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
    return repo.list_deliveries(session, hook.id, status, limit)


def body_bytes(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed): canonical JSON, the same on every attempt."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def notify(
    session: Session, org_id: str, request_id: str | None, event_type: str, data: dict[str, Any]
) -> list[str]:
    """Queue ``event_type`` to each live webhook of the organisation; sent after commit.

    Returns the new deliveries' ids (empty when the organisation has no live webhook).
    """
    hooks = repo.live_webhook_ids(session, org_id)
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
        repo.insert_delivery(
            session,
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
            ),
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
    if not repo.has_live_webhook(session, org_id):  # the common case: no query beyond this one
        return []
    request = repo.request_references(session, job.request_id)
    # Read from the database: the transition's UPDATE has not refreshed ``job`` yet.
    output_version_id = repo.stored_output_version_id(session, job.id)
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


# Delivery attempts (the worker, workers.webhooks, opens the session and sends the POST).

# A claimed delivery is not due again before this many seconds past its timeout: a duplicate
# message cannot send it twice at once, and a worker lost mid-send does not block it for good.
CLAIM_MARGIN_S = 30.0


@dataclass(frozen=True)
class Claimed:
    id: str
    url: str
    secret: str
    body: bytes
    attempt: int  # 1 for the first try


@dataclass(frozen=True)
class NotClaimed:
    why: str
    due_in_s: float | None = None  # set when the row is pending but not due yet


def claim(session: Session, delivery_id: str) -> Claimed | NotClaimed:
    """Take a pending, due delivery for one attempt (a conditional UPDATE: one winner)."""
    found = repo.find_delivery(session, delivery_id)
    if found is None:
        return NotClaimed("no such delivery")
    delivery, hook = found
    if delivery.status != PENDING:
        return NotClaimed(f"already {delivery.status}")
    now = utcnow()
    if hook.disabled_at is not None:
        ended = {"status": FAILED, "last_error": "the webhook was disabled before delivery"}
        repo.update_pending(session, delivery.id, delivery.attempts, ended)
        return NotClaimed("webhook disabled")
    if delivery.next_attempt_at > now:
        return NotClaimed("not due", (delivery.next_attempt_at - now).total_seconds())
    lease = timedelta(seconds=get_settings().webhook_timeout_s + CLAIM_MARGIN_S)
    if not repo.take_attempt(session, delivery.id, delivery.attempts, now + lease):
        return NotClaimed("claimed by another worker")
    return Claimed(
        delivery.id, hook.url, hook.secret, body_bytes(delivery.payload), delivery.attempts + 1
    )


def record_attempt(session: Session, claimed: Claimed, code: int | None, error: str | None) -> str:
    """Write the attempt's outcome; schedule the next one (sent after commit), or give up after
    the last, audited."""
    settings = get_settings()
    now = utcnow()
    if error is None:
        delivered = {
            "status": DELIVERED,
            "delivered_at": now,
            "last_status_code": code,
            "last_error": None,
        }
        repo.update_pending(session, claimed.id, claimed.attempt, delivered)
        return DELIVERED
    common = {"last_status_code": code, "last_error": error}
    if claimed.attempt >= settings.webhook_max_attempts:
        if repo.update_pending(session, claimed.id, claimed.attempt, {"status": FAILED, **common}):
            _audit_failure(session, claimed, code, error)
        return FAILED
    delay = settings.webhook_backoff_s * 2 ** (claimed.attempt - 1)
    due = now + timedelta(seconds=delay)
    if repo.update_pending(
        session, claimed.id, claimed.attempt, {"next_attempt_at": due, **common}
    ):
        send_after_commit(session, DELIVER_TASK, claimed.id, settings.webhook_queue, delay)
    return RETRYING


def _audit_failure(session: Session, claimed: Claimed, code: int | None, error: str) -> None:
    origin = repo.delivery_origin(session, claimed.id)
    audit.record(
        session,
        worker_actor(origin.org_id),
        "webhook.delivery_failed",
        request_id=origin.request_id,
        details={
            "webhook_id": origin.webhook_id,
            "delivery_id": claimed.id,
            "event_type": origin.event_type,
            "attempts": claimed.attempt,
            "last_status_code": code,
            "last_error": error,
        },
    )


def due_deliveries(session: Session) -> list[str]:
    """Pending deliveries that are due now."""
    return repo.due_pending_ids(session, utcnow())
