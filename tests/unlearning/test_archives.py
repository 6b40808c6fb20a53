"""Member names that would leave their folder when an archive is unpacked."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

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
