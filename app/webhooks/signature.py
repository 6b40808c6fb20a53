"""Webhook signatures: HMAC-SHA256 over ``<id>.<timestamp>.<body>`` keyed with the secret.

A delivery carries three headers::

    Nepenthe-Webhook-Id: <delivery id>
    Nepenthe-Webhook-Timestamp: <unix seconds>
    Nepenthe-Webhook-Signature: v1=<hex HMAC-SHA256(secret, f"{id}.{timestamp}.".encode() + body)>

The key is the whole secret as shown at creation (``whsec_...``), UTF-8 encoded. Receivers check
the signature over the raw body bytes, before parsing them, and refuse stale timestamps (replays).
Pure functions, no service imports: receivers may copy this file.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

ID_HEADER = "Nepenthe-Webhook-Id"
TIMESTAMP_HEADER = "Nepenthe-Webhook-Timestamp"
SIGNATURE_HEADER = "Nepenthe-Webhook-Signature"
VERSION = "v1"


def sign(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: ``v1=<hex digest>``."""
    message = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return f"{VERSION}={digest}"


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """True when ``headers`` (any letter case) carry a valid signature of ``body`` made with
    ``secret`` and a timestamp within ``tolerance_s`` of ``now`` (default: the clock).

    The signature header may list several space- or comma-separated signatures (as during a
    secret rotation); one valid ``v1`` signature is enough.
    """
    found = {name.lower(): value for name, value in headers.items()}
    delivery_id = found.get(ID_HEADER.lower())
    stamp = found.get(TIMESTAMP_HEADER.lower())
    given = found.get(SIGNATURE_HEADER.lower())
    if not delivery_id or not stamp or not given:
        return False
    try:
        timestamp = int(stamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = sign(secret, delivery_id, timestamp, body)
    candidates = given.replace(",", " ").split()
    # Compare with every candidate (no early exit), in constant time each.
    matches = [
        hmac.compare_digest(expected.encode(), c.encode())
        for c in candidates
        if c.startswith(f"{VERSION}=")
    ]
    return any(matches)
