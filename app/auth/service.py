"""Organisations and their API keys. A key is ``nep_<id>_<secret>``; only an HMAC of the secret
(keyed with the server's secret) is stored, and it is compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.actors import Actor, Scope
from app.audit import service as audit
from app.auth import repository as repo
from app.auth.schemas import Identity
from app.config import get_settings
from app.errors import ApiKeyNotFound, Conflict, NameTaken
from app.orm import ApiKey, Organization, utcnow

TOKEN = re.compile(r"nep_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


def secret_hash(secret: str) -> str:
    key = get_settings().secret_key.get_secret_value().encode()
    return hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()


def create_org(session: Session, name: str, actor_name: str) -> Organization:
    if repo.org_name_exists(session, name):
        raise NameTaken(f"an organisation named {name!r} already exists")
    org = Organization(name=name)
    try:
        repo.insert_org(session, org)
    except IntegrityError as exc:
        raise NameTaken(f"an organisation named {name!r} already exists") from exc
    audit.start_chain(session, org.id)
    audit.record(session, Actor(org.id, actor_name), "organization.created", details={"name": name})
    return org


def find_org(session: Session, ref: str) -> Organization | None:
    """The organisation by id, else by name (for the operator's CLI)."""
    return repo.find_org(session, ref)


def whoami(session: Session, actor: Actor) -> Identity:
    """The organisation and scopes of the calling key."""
    org = repo.get_org(session, actor.org_id)
    assert org is not None  # a key's organisation is never deleted
    return Identity(
        org_id=org.id,
        org_name=org.name,
        key_id=actor.name.removeprefix("key:"),
        scopes=sorted(actor.scopes),
    )


def create_key(
    session: Session, actor: Actor, name: str, scopes: list[Scope]
) -> tuple[ApiKey, str]:
    """A new key of the actor's organisation; the token is returned once and never stored."""
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    key = ApiKey(
        id=key_id,
        org_id=actor.org_id,
        name=name,
        scopes=sorted(set(scopes)),
        secret_hash=secret_hash(secret),
        created_by=actor.name,
    )
    repo.insert_key(session, key)
    audit.record(
        session,
        actor,
        "api_key.created",
        details={"key_id": key_id, "name": name, "scopes": key.scopes},
    )
    return key, f"nep_{key_id}_{secret}"


def authenticate(session: Session, token: str) -> ApiKey | None:
    """The live key a token names, or None (unknown, wrong secret or revoked)."""
    match = TOKEN.fullmatch(token)
    if match is None:
        return None
    key = repo.get_key(session, match.group(1))
    # Hash and compare even when the id is unknown, so timing does not tell which ids exist.
    expected = key.secret_hash if key is not None else "0" * 64
    if not hmac.compare_digest(secret_hash(match.group(2)), expected):
        return None
    return key if key is not None and key.revoked_at is None else None


def list_keys(session: Session, org_id: str) -> list[ApiKey]:
    return repo.list_keys(session, org_id)


def revoke_key(session: Session, actor: Actor, key_id: str) -> ApiKey:
    key = repo.get_key(session, key_id)
    if key is None or key.org_id != actor.org_id:
        raise ApiKeyNotFound(f"no API key {key_id!r}")
    if key.revoked_at is not None:
        raise Conflict(f"API key {key_id!r} is already revoked")
    key.revoked_at = utcnow()
    audit.record(session, actor, "api_key.revoked", details={"key_id": key_id, "name": key.name})
    return key
