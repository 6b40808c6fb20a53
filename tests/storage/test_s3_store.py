"""The S3 store against a real S3-compatible server (moto_server on loopback)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from app.config import Environment, Settings
from app.storage import (
    ChecksumMismatch,
    LocalArtifactStore,
    S3ArtifactStore,
    StoreConfigurationError,
    content_key,
    store_from,
)
from tests.storage.conftest import settings_from

DATA = b"weights that matter" * 1000


def s3_store(settings) -> S3ArtifactStore:
    store = store_from(settings)
    assert isinstance(store, S3ArtifactStore)
    return store


def bucket_keys(s3, bucket: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(o["Key"] for o in listed)


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_put_exists_local_path_delete(s3, s3_settings):
    store = s3_store(s3_settings)
    stored = store.put_bytes(DATA, ".safetensors")
    digest = hashlib.sha256(DATA).hexdigest()
    assert stored.key == f"sha256/{digest[:2]}/{digest}.safetensors"
    assert (stored.sha256, stored.size) == (digest, len(DATA))
    assert bucket_keys(s3, s3_settings.s3_bucket) == [stored.key]
    assert store.exists(stored.key)

    path = store.local_path(stored.key)
    assert path == s3_settings.store_cache_dir / stored.key
    assert path.read_bytes() == DATA
    assert store.local_path(stored.key) == path  # a second read is served from the cache

    store.delete(stored.key)
    assert not store.exists(stored.key)
    assert bucket_keys(s3, s3_settings.s3_bucket) == []
    assert not path.exists()  # the cached copy went with the object
    assert not store.local_path(stored.key).exists()


def test_identical_content_is_uploaded_once(s3, s3_settings):
    store = s3_store(s3_settings)
    puts: list[str] = []

    def count(params, **_):
        puts.append(params["url_path"])

    store.client.meta.events.register("before-call.s3.PutObject", count)
    try:
        first = store.put_bytes(DATA, ".bin")
        again = store.put_bytes(DATA, ".bin")
    finally:
        store.client.meta.events.unregister("before-call.s3.PutObject", count)
    assert (again.key, again.sha256, again.size) == (first.key, first.sha256, first.size)
    assert first.created and not again.created  # only the first put may remove it again
    assert len(puts) == 1
    assert bucket_keys(s3, s3_settings.s3_bucket) == [first.key]


def test_a_damaged_cached_copy_is_never_served(s3_settings):
    store = s3_store(s3_settings)
    key = store.put_bytes(DATA, ".bin").key
    cached = store.local_path(key)
    cached.write_bytes(b"bit rot on the worker's disk")
    # The bucket still holds the original: the cache is refilled from it.
    assert store.local_path(key).read_bytes() == DATA


def test_a_damaged_object_raises_and_leaves_nothing_in_the_cache(s3, s3_settings):
    store = s3_store(s3_settings)
    key = store.put_bytes(DATA, ".bin").key
    s3.put_object(Bucket=s3_settings.s3_bucket, Key=key, Body=b"tampered")
    with pytest.raises(ChecksumMismatch, match="restore it from backup"):
        store.local_path(key)
    assert files_under(s3_settings.store_cache_dir) == []

    cached = s3_settings.store_cache_dir / key  # damaged in the cache and in the bucket
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch):
        store.local_path(key)
    assert files_under(s3_settings.store_cache_dir) == []


def test_a_missing_object(s3_settings):
    store = s3_store(s3_settings)
    key = content_key(hashlib.sha256(b"never stored").hexdigest(), ".npz")
    assert not store.exists(key)
    assert not store.local_path(key).exists()
    store.delete(key)  # nothing to delete is no error
    assert files_under(s3_settings.store_cache_dir) == []


def test_the_prefix_is_honoured(s3, s3_env):
    tenant = s3_store(settings_from(s3_env, s3_prefix="/tenant-a/"))
    key = tenant.put_bytes(DATA, ".bin").key
    assert bucket_keys(s3, s3_env["NEPENTHE_S3_BUCKET"]) == [f"tenant-a/{key}"]
    assert tenant.exists(key)
    other = s3_store(settings_from(s3_env, s3_prefix="tenant-b"))
    assert not other.exists(key)
    # A cached copy is shared (same key, same bytes), but a missing object stays missing.
    other.delete(key)
    assert tenant.exists(key)
    assert not other.local_path(key).exists()


@pytest.mark.parametrize("key", ["../outside", "sha256/../../etc/passwd", "/etc/passwd"])
def test_keys_that_leave_the_store_are_refused(s3_settings, tmp_path, key):
    for store in (s3_store(s3_settings), LocalArtifactStore(tmp_path)):
        with pytest.raises(ValueError, match="bad storage key"):
            store.local_path(key)
        with pytest.raises(ValueError, match="bad storage key"):
            store.delete(key)


def test_a_key_that_names_no_digest_is_refused(s3_settings):
    with pytest.raises(ValueError, match="not a content-addressed"):
        s3_store(s3_settings).local_path("sha256/ab/not-a-digest.bin")


def test_the_local_store_is_the_default(tmp_path):
    store = store_from(settings_from({}, store_dir=tmp_path))
    assert isinstance(store, LocalArtifactStore)
    key = store.put_bytes(DATA, ".bin").key
    assert store.local_path(key) == tmp_path / key
    assert store.local_path(key).read_bytes() == DATA


def test_a_bucket_that_does_not_exist_is_reported_at_first_use(s3_env):
    store = s3_store(settings_from(s3_env, s3_bucket="no-such-bucket"))
    with pytest.raises(StoreConfigurationError, match=r"'no-such-bucket' .* does not exist"):
        store.put_bytes(DATA, ".bin")


def test_bad_configuration_is_reported(s3_env):
    with pytest.raises(StoreConfigurationError, match="needs NEPENTHE_S3_BUCKET"):
        store_from(settings_from(s3_env, s3_bucket=None))
    with pytest.raises(StoreConfigurationError, match="both"):
        store_from(settings_from(s3_env, s3_secret_access_key=None))
    closed = s3_store(settings_from(s3_env, s3_endpoint_url="http://127.0.0.1:1"))
    with pytest.raises(StoreConfigurationError, match="cannot use the S3 bucket"):
        closed.exists(content_key("0" * 64, ".bin"))


def test_production_refuses_s3_without_a_bucket(tmp_path):
    key_file = tmp_path / "signing-key.pem"
    key_file.touch()
    production = {
        "env": Environment.production,
        "secret_key": "s" * 40,
        "signing_key_file": key_file,
        "store_backend": "s3",
    }
    assert Settings(_env_file=None, **production).production_problems() == [
        "NEPENTHE_STORE_BACKEND is s3 but NEPENTHE_S3_BUCKET is not set"
    ]
    assert Settings(_env_file=None, **production, s3_bucket="b").production_problems() == []
