""".npz datasets are bounded before numpy allocates an array: by the zip directory, by inflating
each member (counted, not kept), and by each array's own header. np.load is replaced by a
tripwire in the tests of refusals, so a refusal is known to come before it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import Member, MiB, member, raw_zip, zeros_member
from unlearning import archives, data

LIMITS = archives.InflateLimits(max_bytes=2 * 1024**3, max_ratio=100)


@pytest.fixture
def np_load_unreached(monkeypatch):
    def tripwire(*args, **kwargs):
        raise AssertionError("np.load was reached: the archive was not refused first")

    monkeypatch.setattr(np, "load", tripwire)


def npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def labels(n: int) -> Member:
    return member("labels.npy", npy(np.arange(n) % 2))


def write(tmp_path: Path, payload: bytes) -> Path:
    path = tmp_path / "d.npz"
    path.write_bytes(payload)
    return path


def test_a_megabyte_that_inflates_to_a_gibibyte_is_refused(tmp_path, np_load_unreached):
    # 1024 valid 1024x1024 images, all black: a real dataset's shape, a bomb's ratio.
    images = zeros_member("images.npy", 1024, prefix=npy_header((1024, 1024, 1024)))
    path = write(tmp_path, raw_zip([images, labels(1024)]))
    assert path.stat().st_size < 1.1 * MiB
    with pytest.raises(data.DatasetError) as err:
        data.open_splits("npz", str(path), limits=LIMITS)
    assert err.value.code == "upload_inflates_too_far"
    assert "1024.0 MiB" in str(err.value)


def test_the_inflated_bytes_are_bounded(tmp_path, np_load_unreached):
    images = member("images.npy", npy(np.zeros((10, 100, 100), np.uint8)), deflated=True)
    path = write(tmp_path, raw_zip([images, labels(10)]))
    with pytest.raises(data.DatasetError) as err:
        data.open_splits("npz", str(path), limits=archives.InflateLimits(50_000))
    assert err.value.code == "upload_inflates_too_far"
    assert "50000" in str(err.value)


def test_a_member_that_inflates_past_its_declared_size_is_refused(tmp_path, np_load_unreached):
    # A valid 10x8x8 images.npy as far as the directory declares, 64 MiB of zeros beyond it.
    header = npy_header((10, 8, 8))
    lying = zeros_member("images.npy", 64, declared=len(header) + 640, prefix=header)
    path = write(tmp_path, raw_zip([lying, labels(10)]))
    with pytest.raises(data.DatasetError) as err:
        data.open_splits("npz", str(path), limits=LIMITS)
    assert err.value.code == "upload_inflates_too_far"


def test_an_array_header_declaring_more_than_its_member_holds(tmp_path, np_load_unreached):
    # Within the bound, yet numpy would allocate 1 GiB before finding 64 bytes.
    lying = member("images.npy", npy_header((2**20, 32, 32)) + bytes(64))
    path = write(tmp_path, raw_zip([lying, labels(10)]))
    with pytest.raises(data.DatasetError) as err:
        data.open_splits("npz", str(path), limits=LIMITS)
    assert err.value.code == "dataset_unreadable"
    assert "images.npy" in str(err.value)


def test_honest_archives_pass_the_bounds(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (40, 8, 8), dtype=np.uint8)
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, images=images, labels=np.arange(40) % 4)
        train, test = data.open_splits("npz", str(path), limits=LIMITS)
        assert len(train) + len(test) == 40
    # Black images compress a thousandfold: below RATIO_FLOOR that is no bomb.
    black = tmp_path / "black.npz"
    np.savez_compressed(black, images=np.zeros((64, 256, 256), np.uint8), labels=np.arange(64) % 2)
    assert len(data.open_split("npz", str(black), "train", limits=LIMITS)) > 0
