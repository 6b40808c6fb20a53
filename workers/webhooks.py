"""Webhook delivery: claim a pending delivery, POST it signed, record the outcome, retry later.

The database is the source of truth: a message names a delivery row; the row says whether it is
still pending and when it is due. A duplicate message finds nothing to claim, one that arrives
early waits until the row is due, and a starting worker re-sends every overdue pending row.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

import httpx
from celery.signals import worker_ready
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.actors import worker_actor
from app.audit import service as audit
from app.config import get_settings
from app.db import session_scope
from app.observability import log_context
from app.orm import Webhook, WebhookDelivery, utcnow
from app.queue import send_after_commit, send_task
from app.webhooks import signature
from app.webhooks.service import (
    DELIVER_TASK,
    DELIVERED,
    FAILED,
    PENDING,
    body_bytes,
    check_reachable_publicly,
)
from workers.celery_app import app

log = logging.getLogger(__name__)
# httpx logs every request's URL at INFO; webhook URLs often carry a token: keep them out.
logging.getLogger("httpx").setLevel(logging.WARNING)
# A claimed delivery is not due again before this many seconds past its timeout: a duplicate
# message cannot send it twice at once, and a worker lost mid-send does not block it for good.
CLAIM_MARGIN_S = 30.0
MAX_ERROR_CHARS = 1000


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


def claim(delivery_id: str) -> Claimed | NotClaimed:
    """Take a pending, due delivery for one attempt (a conditional UPDATE: one winner)."""
    settings = get_settings()
    with session_scope() as session:
        found = session.execute(
            select(WebhookDelivery, Webhook)
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .where(WebhookDelivery.id == delivery_id)
        ).one_or_none()
        if found is None:
            return NotClaimed("no such delivery")
        delivery, hook = found
        if delivery.status != PENDING:
            return NotClaimed(f"already {delivery.status}")
        now = utcnow()
        if hook.disabled_at is not None:
            _end(
                session,
                delivery.id,
                delivery.attempts,
                {
                    "status": FAILED,
                    "last_error": "the webhook was disabled before delivery",
                },
            )
            return NotClaimed("webhook disabled")
        if delivery.next_attempt_at > now:
            return NotClaimed("not due", (delivery.next_attempt_at - now).total_seconds())
        lease = timedelta(seconds=settings.webhook_timeout_s + CLAIM_MARGIN_S)
        taken = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery.id,
                WebhookDelivery.status == PENDING,
                WebhookDelivery.attempts == delivery.attempts,
            )
            .values(attempts=WebhookDelivery.attempts + 1, next_attempt_at=now + lease)
            .execution_options(synchronize_session=False)
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            return NotClaimed("claimed by another worker")
        return Claimed(
            delivery.id, hook.url, hook.secret, body_bytes(delivery.payload), delivery.attempts + 1
        )


def _end(session: Session, delivery_id: str, attempts: int, values: dict[str, object]) -> bool:
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


def post(claimed: Claimed, timeout_s: float) -> tuple[int | None, str | None]:
    """Send once: (HTTP status or None, error or None when a 2xx came back)."""
    stamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Nepenthe-Webhooks/1",
        signature.ID_HEADER: claimed.id,
        signature.TIMESTAMP_HEADER: str(stamp),
        signature.SIGNATURE_HEADER: signature.sign(claimed.secret, claimed.id, stamp, claimed.body),
    }
    try:
        # Checked again at each send: a name that resolved to a public address when the
        # webhook was made may point inside the network now (DNS rebinding).
        check_reachable_publicly(claimed.url)
        with (
            httpx.Client(timeout=timeout_s, follow_redirects=False) as http,
            http.stream("POST", claimed.url, content=claimed.body, headers=headers) as response,
        ):
            code = response.status_code  # the body is never read
    except Exception as exc:  # connection refused, timeout, bad URL: all count as a failed try
        return None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
    return code, None if 200 <= code < 300 else f"HTTP {code}"


def record(claimed: Claimed, code: int | None, error: str | None) -> str:
    """Write the attempt's outcome; schedule the next one, or give up after the last."""
    settings = get_settings()
    now = utcnow()
    with session_scope() as session:
        if error is None:
            _end(
                session,
                claimed.id,
                claimed.attempt,
                {
                    "status": DELIVERED,
                    "delivered_at": now,
                    "last_status_code": code,
                    "last_error": None,
                },
            )
            return DELIVERED
        common = {"last_status_code": code, "last_error": error}
        if claimed.attempt >= settings.webhook_max_attempts:
            if _end(session, claimed.id, claimed.attempt, {"status": FAILED, **common}):
                _audit_failure(session, claimed, code, error)
            return FAILED
        delay = settings.webhook_backoff_s * 2 ** (claimed.attempt - 1)
        due = now + timedelta(seconds=delay)
        if _end(session, claimed.id, claimed.attempt, {"next_attempt_at": due, **common}):
            send_after_commit(session, DELIVER_TASK, claimed.id, settings.webhook_queue, delay)
        return "retrying"


def _audit_failure(session: Session, claimed: Claimed, code: int | None, error: str) -> None:
    row = session.execute(
        select(Webhook.id, Webhook.org_id, WebhookDelivery.request_id, WebhookDelivery.event_type)
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(WebhookDelivery.id == claimed.id)
    ).one()
    audit.record(
        session,
        worker_actor(row.org_id),
        "webhook.delivery_failed",
        request_id=row.request_id,
        details={
            "webhook_id": row.id,
            "delivery_id": claimed.id,
            "event_type": row.event_type,
            "attempts": claimed.attempt,
            "last_status_code": code,
            "last_error": error,
        },
    )


@app.task(name=DELIVER_TASK, acks_late=True)
def deliver(delivery_id: str) -> str:
    with log_context(delivery_id=delivery_id):  # every log line of the send carries its id
        return _deliver(delivery_id)


def _deliver(delivery_id: str) -> str:
    settings = get_settings()
    claimed = claim(delivery_id)
    if isinstance(claimed, NotClaimed):
        if claimed.due_in_s is not None:
            # Early (a duplicate, or a message re-sent while a claim's lease runs): wait for it.
            send_task(DELIVER_TASK, delivery_id, settings.webhook_queue, claimed.due_in_s + 0.05)
            return "deferred"
        log.info("webhook delivery %s skipped: %s", delivery_id, claimed.why)
        return "skipped"
    code, error = post(claimed, settings.webhook_timeout_s)
    outcome = record(claimed, code, error)
    log.info(
        "webhook delivery %s attempt %d: %s (%s)",
        delivery_id,
        claimed.attempt,
        outcome,
        error or code,
    )
    return outcome


@worker_ready.connect
def resend_due_deliveries(**_: object) -> None:
    """Re-send pending deliveries that are due: their message may have been lost (a broker
    restart, a worker killed while holding a retry). A duplicate finds nothing to claim."""
    settings = get_settings()
    with session_scope(read_only=True) as session:
        due = list(
            session.scalars(
                select(WebhookDelivery.id).where(
                    WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= utcnow()
                )
            )
        )
    sent = sum(send_task(DELIVER_TASK, delivery_id, settings.webhook_queue) for delivery_id in due)
    if due:
        log.info("re-sent %d of %d pending webhook deliveries", sent, len(due))
