"""Console sign-in: an API key is exchanged for a session whose token lives in an HttpOnly
cookie; the key itself never reaches the browser's storage."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session

from app.actors import Actor, Scope
from app.audit import service as audit
from app.auth import service as auth
from app.config import get_settings
from app.console import repository as repo
from app.errors import CsrfTokenInvalid, InvalidApiKey
from app.orm import ApiKey, ConsoleSession, utcnow

COOKIE = "nepenthe_console"
LOGIN_COOKIE = "nepenthe_console_login"  # the sign-in form's CSRF token (no session yet)
# Ended or expired sessions are kept a day (the audit log keeps every sign-in and sign-out).
PURGE_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class Origin:
    """Where a console request came from, for the audit log."""

    client_address: str | None
    request_id: str | None


@dataclass(frozen=True)
class SignedIn:
    actor: Actor
    key_name: str
    csrf_token: str
    session_id: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def sign_in(session: Session, api_key: str, origin: Origin) -> tuple[str, SignedIn]:
    """A new console session for a live key: the cookie's token (returned once) and who it is.
    (A browser that holds a live session never gets here: the sign-in page sends it on.)"""
    key = auth.authenticate(session, api_key.strip())
    if key is None:
        raise InvalidApiKey("the API key is unknown, malformed or revoked")
    repo.purge_expired(session, utcnow() - PURGE_AFTER)
    token = secrets.token_urlsafe(32)
    hours = get_settings().console_session_hours
    row = ConsoleSession(
        id=token_hash(token),
        key_id=key.id,
        csrf_token=secrets.token_urlsafe(32),
        expires_at=utcnow() + timedelta(hours=hours),
    )
    repo.insert(session, row)
    actor = _actor(key, origin)
    audit.record(session, actor, "console.signed_in", details={"key_id": key.id})
    return token, SignedIn(actor, key.name, row.csrf_token, row.id)


def current(session: Session, token: str | None, origin: Origin) -> SignedIn | None:
    """The live session a cookie names: not ended, not expired, and its key not revoked."""
    if not token:
        return None
    found = repo.get_with_key(session, token_hash(token))
    if found is None:
        return None
    row, key = found
    if row.ended_at is not None or row.expires_at <= utcnow() or key.revoked_at is not None:
        return None
    actor = _actor(key, origin)
    return SignedIn(actor, key.name, row.csrf_token, row.id)


def sign_out(session: Session, signed_in: SignedIn) -> None:
    row = session.get(ConsoleSession, signed_in.session_id)
    if row is not None and row.ended_at is None:
        row.ended_at = utcnow()
        audit.record(session, signed_in.actor, "console.signed_out", details={})


def check_csrf(expected: str, given: str | None) -> None:
    """Every form of the console carries the session's token; a form posted from elsewhere
    (or replayed after sign-out) does not have it."""
    if not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise CsrfTokenInvalid("the form's CSRF token is missing or does not match this session")


def _actor(key: ApiKey, origin: Origin) -> Actor:
    """The actor the API would make of the key: the audit log cannot tell a console action
    from the same call made with the key."""
    return Actor(
        org_id=key.org_id,
        name=f"key:{key.id}",
        scopes=frozenset(Scope(s) for s in key.scopes),
        client_address=origin.client_address,
        http_request_id=origin.request_id,
    )
