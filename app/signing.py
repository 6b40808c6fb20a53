"""Ed25519 signatures over canonical JSON: receipts, certificates and audit chain heads.

This module needs neither the database nor the settings, so the CLI can verify a signed document
offline with nothing but the file and the published public key.

A signed document is ``{"payload": {...}, "signature": {"alg", "key_id", "value"}}``. The
signature covers the canonical serialisation of the payload: JSON with sorted keys, no spaces,
ASCII only, so that any party can rebuild the exact bytes that were signed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "Ed25519"


def canonical_json(value: Any) -> bytes:
    """The bytes that are hashed and signed: one spelling per value."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def json_value(value: Any) -> Any:
    """``value`` as plain JSON that reads back equal from any database, ready to hash or sign:
    non-finite floats become null, numpy scalars Python numbers, keys text, tuples lists, and
    anything else (StrEnum included) its text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, np.generic):
        return json_value(value.item())
    if value is None or isinstance(value, bool | int):
        return value
    return str(value)


def sha256_hex(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short fingerprint: the first 16 hex digits of SHA-256 over the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@dataclass(frozen=True)
class Signer:
    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def sign(self, payload: dict[str, Any]) -> dict[str, Any]:
        value = self.private_key.sign(canonical_json(payload))
        return {
            "payload": payload,
            "signature": {
                "alg": ALGORITHM,
                "key_id": self.key_id,
                "value": base64.b64encode(value).decode(),
            },
        }


def create_key_file(path: Path) -> None:
    """Write a new private key, readable by its owner only; never overwrite one."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole under a temporary name, then linked into place: a process starting at the
    # same moment finds either no key or the whole key, never an empty file. link() refuses an
    # existing name (FileExistsError), so a key is never overwritten.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".signing-key-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def load_signer(path: Path) -> Signer:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return Signer(key)


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


class VerificationError(Exception):
    """The document is malformed, signed by another key, or altered since it was signed."""


def verify_file(document: Path, public_key_pem: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The signed document in a file and its verified payload (VerificationError or ValueError
    when it does not check out against the PEM key file)."""
    signed = json.loads(document.read_text())
    return signed, verify(signed, load_public_key(public_key_pem.read_bytes()))


def verify(document: Any, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """The payload of a signed document, once its signature checks out."""
    if not isinstance(document, dict) or not isinstance(document.get("payload"), dict):
        raise VerificationError("not a signed document: no payload object")
    signature = document.get("signature")
    if not isinstance(signature, dict) or signature.get("alg") != ALGORITHM:
        raise VerificationError(f"not a signed document: no {ALGORITHM} signature")
    if signature.get("key_id") != key_id(public_key):
        raise VerificationError(
            f"signed by key {signature.get('key_id')!r}, not by the given key "
            f"{key_id(public_key)!r}"
        )
    try:
        value = base64.b64decode(str(signature.get("value")), validate=True)
        public_key.verify(value, canonical_json(document["payload"]))
    except (InvalidSignature, ValueError) as exc:
        raise VerificationError(
            "the signature does not match the payload: the document was altered"
        ) from exc
    return dict(document["payload"])
