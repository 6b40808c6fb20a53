"""Content-addressed checkpoint store: on the local disk, or in an S3-compatible bucket.

Every object lives under the key ``sha256/<2>/<digest><suffix>``, so identical bytes are stored
once and any copy can be checked against its own key. The database records keys, digests and
sizes, never filesystem paths or bucket names.

No reader ever sees a partial object: the local store renames a fully written, fsync'ed temporary
file into place, and an S3 PUT becomes visible only once complete. Readers get a local file
(``local_path``): the stored file itself, or for S3 a copy in a cache folder that was checked
against the digest in its key.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Protocol

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from app.config import Settings, get_settings
from app.errors import CheckpointMissing, StoreConfigurationError

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    key: str
    sha256: str
    size: int
    # This put wrote the object (False: the same bytes were there already, another writer's).
    # Only the writer may remove an object it finds unreferenced.
    created: bool = False


class ArtifactStore(Protocol):
    def put_bytes(self, data: bytes, suffix: str) -> StoredObject:
        """Store ``data`` under its content key (once: identical bytes are not written again)."""
        ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int:
        """The object's length in bytes; 0 when there is no such object."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is no error."""
        ...

    def local_path(self, key: str) -> Path:
        """A readable local file holding the object; a path that does not exist when the
        store has no such object (callers report it missing, as for a lost local file)."""
        ...


class ChecksumMismatch(RuntimeError):
    """A stored object's bytes do not hash to the digest its key names."""


def content_key(digest: str, suffix: str) -> str:
    return f"sha256/{digest[:2]}/{digest}{suffix}"


def checked_key(key: str) -> str:
    """``key`` if it stays inside the store (keys come from the database, but a path escape is
    refused whatever its origin)."""
    if ".." in Path(key).parts or key.startswith("/"):
        raise ValueError(f"bad storage key {key!r}")
    return key


def key_digest(key: str) -> str:
    """The SHA-256 a content key names."""
    parts = checked_key(key).split("/")
    digest = parts[2][:64] if len(parts) == 3 and parts[0] == "sha256" else ""
    if len(digest) != 64 or parts[1] != digest[:2] or not _is_hex(digest):
        raise ValueError(f"not a content-addressed storage key: {key!r}")
    return digest


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def file_sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@contextmanager
def _atomic_file(target: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside ``target`` that replaces it, fsync'ed, only when the block ends
    without an exception; otherwise the temporary file is removed and ``target`` is untouched."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def put_bytes(self, data: bytes, suffix: str) -> StoredObject:
        digest = hashlib.sha256(data).hexdigest()
        key = content_key(digest, suffix)
        target = self.local_path(key)
        if target.exists():
            return StoredObject(key, digest, len(data))
        with _atomic_file(target) as fh:
            fh.write(data)
        return StoredObject(key, digest, len(data), created=True)

    def local_path(self, key: str) -> Path:
        return self.root / checked_key(key)

    def exists(self, key: str) -> bool:
        return self.local_path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self.local_path(key).stat().st_size
        except FileNotFoundError:
            return 0

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)


@dataclass(frozen=True)
class S3Config:
    bucket: str
    endpoint_url: str | None
    region: str
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return f"bucket {self.bucket!r} at {self.endpoint_url or 'AWS S3'}"


def s3_config(settings: Settings) -> S3Config:
    if not settings.s3_bucket:
        raise StoreConfigurationError("NEPENTHE_STORE_BACKEND=s3 needs NEPENTHE_S3_BUCKET")
    key_id, secret = settings.s3_access_key_id, settings.s3_secret_access_key
    if (key_id is None) != (secret is None):
        raise StoreConfigurationError(
            "set both NEPENTHE_S3_ACCESS_KEY_ID and NEPENTHE_S3_SECRET_ACCESS_KEY, or neither "
            "(then boto3's credential chain applies: environment, ~/.aws, instance role)"
        )
    return S3Config(
        bucket=settings.s3_bucket,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=key_id.get_secret_value() if key_id else None,
        secret_access_key=secret.get_secret_value() if secret else None,
    )


@lru_cache
def _connect(config: S3Config) -> BaseClient:
    """One client per configuration and process (creating one costs tens of milliseconds),
    made only once the bucket answered, so a bad setting fails at first use with its reason."""
    try:
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            config=Config(connect_timeout=10, read_timeout=60, retries={"mode": "standard"}),
        )
        client.head_bucket(Bucket=config.bucket)
    except ClientError as exc:
        raise StoreConfigurationError(_bucket_problem(config, exc)) from exc
    except NoCredentialsError as exc:
        raise StoreConfigurationError(
            f"no credentials for the S3 {config.where}: set NEPENTHE_S3_ACCESS_KEY_ID and "
            "NEPENTHE_S3_SECRET_ACCESS_KEY, or configure boto3's credential chain"
        ) from exc
    except (BotoCoreError, ValueError) as exc:  # unreachable or malformed endpoint
        raise StoreConfigurationError(f"cannot use the S3 {config.where}: {exc}") from exc
    return client


# A client is not safe to share with a forked child (Celery's prefork pool): a child makes its own.
os.register_at_fork(after_in_child=_connect.cache_clear)


def _bucket_problem(config: S3Config, exc: ClientError) -> str:
    status = _status(exc)
    if status == 404:
        return f"the S3 {config.where} does not exist: create it or fix NEPENTHE_S3_BUCKET"
    if status in (401, 403):
        return f"access to the S3 {config.where} is denied: check the credentials"
    return f"cannot use the S3 {config.where}: {exc}"


def _status(exc: ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def _is_missing(exc: ClientError) -> bool:
    """A missing object (HEAD answers a bare 404), not a bucket that vanished since _connect."""
    code = exc.response.get("Error", {}).get("Code")
    return code != "NoSuchBucket" and (_status(exc) == 404 or code == "NoSuchKey")


class S3ArtifactStore:
    """Objects in a bucket under ``prefix``; reads go through a verified local cache.

    The cache holds plain copies under the same content keys. It is shared by every bucket and
    prefix (equal keys mean equal bytes) and may be emptied at any time.
    """

    def __init__(self, config: S3Config, cache_dir: Path, prefix: str = "") -> None:
        self.config = config
        self.cache_dir = cache_dir
        self.prefix = prefix.strip("/")

    @property
    def client(self) -> BaseClient:
        return _connect(self.config)

    def object_name(self, key: str) -> str:
        key = checked_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, data: bytes, suffix: str) -> StoredObject:
        digest = hashlib.sha256(data).hexdigest()
        key = content_key(digest, suffix)
        if self.exists(key):
            return StoredObject(key, digest, len(data))
        # The server recomputes the checksum and refuses the PUT when the bytes it received
        # differ, so a corrupted upload never becomes the object behind the key.
        checksum = base64.b64encode(bytes.fromhex(digest)).decode()
        self.client.put_object(
            Bucket=self.config.bucket,
            Key=self.object_name(key),
            Body=data,
            ChecksumSHA256=checksum,
        )
        return StoredObject(key, digest, len(data), created=True)

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.config.bucket, Key=self.object_name(key))
        except ClientError as exc:
            if _is_missing(exc):
                return False
            raise
        return True

    def size(self, key: str) -> int:
        try:
            head = self.client.head_object(Bucket=self.config.bucket, Key=self.object_name(key))
        except ClientError as exc:
            if _is_missing(exc):
                return 0
            raise
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        name = self.object_name(key)  # a bad key is refused before any request
        self.client.delete_object(Bucket=self.config.bucket, Key=name)
        # The cached copy goes too: a discarded artifact must not outlive its object.
        self._cached(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path:
        digest = key_digest(key)
        target = self._cached(key)
        if target.is_file():
            if file_sha256(target) == digest:
                return target
            # Damaged on this machine's disk; the bucket still holds the original.
            log.warning("cached copy of %s does not match its digest; fetching it again", key)
            target.unlink(missing_ok=True)
        self._download(key, digest, target)
        return target

    def _cached(self, key: str) -> Path:
        return self.cache_dir / checked_key(key)

    def _download(self, key: str, digest: str, target: Path) -> None:
        """Fetch the object into ``target`` if it exists and hashes to ``digest``; a missing
        object leaves ``target`` absent, a mismatch raises and leaves nothing in the cache."""
        try:
            response = self.client.get_object(Bucket=self.config.bucket, Key=self.object_name(key))
        except ClientError as exc:
            if _is_missing(exc):
                return
            raise
        with _atomic_file(target) as fh:
            hasher = hashlib.sha256()
            for chunk in response["Body"].iter_chunks(CHUNK):
                hasher.update(chunk)
                fh.write(chunk)
            if hasher.hexdigest() != digest:
                raise ChecksumMismatch(
                    f"object {self.object_name(key)} in the S3 {self.config.where} has SHA-256 "
                    f"{hasher.hexdigest()}, not the {digest} its key names; restore it from backup"
                )


def store_from(settings: Settings) -> ArtifactStore:
    if settings.store_backend == "s3":
        return S3ArtifactStore(s3_config(settings), settings.store_cache_dir, settings.s3_prefix)
    return LocalArtifactStore(settings.store_dir)


def get_store() -> ArtifactStore:
    """The configured store; an unusable S3 configuration raises StoreConfigurationError here or
    at the store's first request, with what to fix."""
    return store_from(get_settings())


def served_file(key: str, what: str) -> Path:
    """The local file of ``key`` for a download of ``what`` (e.g. "version 2"); a missing or
    damaged object is CheckpointMissing (500: the operator restores it from backup)."""
    try:
        path = get_store().local_path(key)
    except ChecksumMismatch as exc:  # the only copy is damaged: as good as missing
        raise CheckpointMissing(f"the stored file of {what} is damaged: {exc}") from exc
    if not path.is_file():
        raise CheckpointMissing(f"the store has no file for {what}; restore {key} from backup")
    return path
