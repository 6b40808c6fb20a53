"""Webhook delivery: claim a pending delivery, POST it signed, record the outcome, retry later.

The database is the source of truth: a message names a delivery row; the row says whether it is
still pending and when it is due. A duplicate message finds nothing to claim, one that arrives
early waits until the row is due, and a starting worker re-sends every overdue pending row.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit, urlunsplit

import httpx
from celery.signals import worker_ready

from app.config import get_settings
from app.db import session_scope
from app.observability import log_context
from app.queue import send_task
from app.webhooks import service as webhooks
from app.webhooks import signature
from app.webhooks.service import (
    DELIVER_TASK,
    Claimed,
    IpAddress,
    NotClaimed,
    check_reachable_publicly,
)
from workers.celery_app import app

log = logging.getLogger(__name__)
# httpx logs every request's URL at INFO; webhook URLs often carry a token: keep them out.
logging.getLogger("httpx").setLevel(logging.WARNING)
MAX_ERROR_CHARS = 1000


def claim(delivery_id: str) -> Claimed | NotClaimed:
    """Take a pending, due delivery for one attempt (see app.webhooks.service.claim)."""
    with session_scope() as session:
        return webhooks.claim(session, delivery_id)


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
        # Checked again at each send (a name that resolved to a public address when the webhook
        # was made may point inside the network now), and the connection goes to the address
        # checked: resolving again to connect would let a rebinding name answer otherwise.
        addresses = check_reachable_publicly(claimed.url)
        url, host, sni = (
            pinned(claimed.url, addresses[0])
            if addresses
            else (claimed.url, urlsplit(claimed.url).netloc.rpartition("@")[2], None)
        )
        with (
            httpx.Client(timeout=timeout_s, follow_redirects=False) as http,
            http.stream(
                "POST",
                url,
                content=claimed.body,
                headers={**headers, "Host": host},
                extensions={"sni_hostname": sni} if sni else {},
            ) as response,
        ):
            code = response.status_code  # the body is never read
    except Exception as exc:  # connection refused, timeout, bad URL: all count as a failed try
        return None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
    return code, None if 200 <= code < 300 else f"HTTP {code}"


def pinned(url: str, address: IpAddress) -> tuple[str, str, str | None]:
    """The URL with its host replaced by ``address``, the Host header it must still carry, and
    the name TLS must verify the certificate against (None for plain HTTP)."""
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    literal = f"[{address}]" if address.version == 6 else str(address)
    port = f":{parts.port}" if parts.port else ""
    netloc = (userinfo + "@" if userinfo else "") + literal + port
    tls_name = parts.hostname if parts.scheme == "https" else None
    return urlunsplit(parts._replace(netloc=netloc)), host, tls_name


def record(claimed: Claimed, code: int | None, error: str | None) -> str:
    """Write the attempt's outcome; schedule the next one, or give up after the last."""
    with session_scope() as session:
        return webhooks.record_attempt(session, claimed, code, error)


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
        due = webhooks.due_deliveries(session)
    sent = sum(send_task(DELIVER_TASK, delivery_id, settings.webhook_queue) for delivery_id in due)
    if due:
        log.info("re-sent %d of %d pending webhook deliveries", sent, len(due))
