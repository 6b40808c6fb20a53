"""Member names that would leave their folder when an archive is unpacked, and archives that
inflate too far."""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from tests.helpers import MiB, member, raw_zip, zeros_member
from unlearning import archives


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "a/../../x",
        "a/..",
        "/etc/passwd",
        "\\\\server\\share\\x",
        "..\\x",
        "a\\..\\..\\x",
        "C:/x",
        "c:x",
    ],
)
def test_escaping_names(name: str) -> None:
    assert archives.escapes(name)


@pytest.mark.parametrize(
    "name",
    [
        "images.npy",
        "archive/data/0",
        "a/b/c",
        "..x",
        "x..",
        "a/.../b",
        "archive/.data/serialization_id",
    ],
)
def test_names_that_stay_inside(name: str) -> None:
    assert not archives.escapes(name)


def test_members_of_a_zip_and_of_other_files(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name in ("ok.npy", "../up.npy", "/abs.npy"):
            archive.writestr(name, b"x")
    zipped = tmp_path / "a.zip"
    zipped.write_bytes(buf.getvalue())
    assert archives.escaping_members_of(zipped) == ["../up.npy", "/abs.npy"]
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"\x80\x02not a zip")
    assert archives.escaping_members_of(plain) == []


# How far an archive inflates: its zip directory is checked before anything is inflated, and each
# deflated member is inflated (counted, not kept) to prove it holds no more than it declares.

LIMITS = archives.InflateLimits(max_bytes=2 * 1024**3, max_ratio=100)


def write(tmp_path: Path, payload: bytes) -> Path:
    path = tmp_path / "a.zip"
    path.write_bytes(payload)
    return path


def test_a_truthful_bomb_is_refused_by_its_directory(tmp_path: Path) -> None:
    path = write(tmp_path, raw_zip([zeros_member("zeros", 256), member("small", b"x")]))
    assert path.stat().st_size < 300_000  # 256 MiB of zeros in about 260 kB
    with pytest.raises(archives.ArchiveError) as err:
        archives.check_directory(path, LIMITS)
    assert err.value.code == archives.INFLATES_TOO_FAR
    assert "times its size" in str(err.value)
    # Without a ratio bound, the byte bound refuses it.
    with pytest.raises(archives.ArchiveError, match=str(100 * MiB)):
        archives.check_directory(path, archives.InflateLimits(100 * MiB))
    assert archives.check_directory(path, archives.InflateLimits(300 * MiB)) == 256 * MiB + 1


def test_small_archives_may_inflate_at_any_ratio(tmp_path: Path) -> None:
    path = write(tmp_path, raw_zip([zeros_member("zeros", 32)]))
    assert archives.check_inflation(path, LIMITS) == 32 * MiB  # below RATIO_FLOOR


def test_a_member_that_inflates_past_its_declared_size_is_refused(tmp_path: Path) -> None:
    # The directory says 16 bytes (with their CRC): readers would stop there, unaware.
    path = write(tmp_path, raw_zip([zeros_member("lying", 64, declared=16)]))
    assert archives.check_directory(path, LIMITS) == 16
    assert len(zipfile.ZipFile(path).read("lying")) == 16
    with pytest.raises(archives.ArchiveError) as err:
        archives.check_streams(path)
    assert err.value.code == archives.INFLATES_TOO_FAR
    assert "past the 16 bytes" in str(err.value)


def test_streams_are_inflated_a_chunk_at_a_time(tmp_path: Path) -> None:
    path = write(tmp_path, raw_zip([zeros_member("zeros", 128), member("x", b"y" * 999, True)]))
    tracemalloc.start()
    try:
        archives.check_streams(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB  # 128 MiB inflated, one chunk held at a time


def test_other_compression_methods_are_unreadable(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("a.npy", b"x" * 100)
    with pytest.raises(archives.ArchiveError) as err:
        archives.check_directory(write(tmp_path, buf.getvalue()), LIMITS)
    assert err.value.code == "archive_unreadable"
