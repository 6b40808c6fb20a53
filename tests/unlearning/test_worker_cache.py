"""The worker's cache of what repeats between jobs (``unlearning.jobs.cache``): served again,
bounded in bytes, never stale, never leaking one job's weights into the next."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from tests.helpers import ARCH, CLASS_NAMES, SMALL_DATA_PARAMS, trained_state
from tests.helpers import SPEC as DIGITS_SPEC
from unlearning import acceptance, architectures
from unlearning.jobs import JobSpec, NoProgress, cache, run

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def worker_cache() -> Iterator[None]:
    cache.configure(64 * 1024**2)
    yield
    cache.configure(0)


def _npz(path: Path, n: int = 40, value: int | None = None, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (n, 6, 6, 1), dtype=np.uint8)
    if value is not None:
        images[:] = value
    np.savez(
        path,
        images=images,
        labels=np.arange(n) % 4,
        ids=np.array([f"s{i}" for i in range(n)]),
        split=(np.arange(n) % 5 == 0).astype(int),
    )
    return str(path)


def test_a_second_read_of_the_same_dataset_is_served_from_the_cache(tmp_path):
    location = _npz(tmp_path / "d.npz")
    (train, test), first = cache.open_splits("npz", location, dataset_id="ds1")
    (train2, test2), second = cache.open_splits("npz", location, dataset_id="ds1")
    assert (first, second) == ("miss", "hit")
    assert train2 is train and test2 is test
    assert cache.stats()["datasets"]["hits"] == 1
    # Shared between jobs, so read-only: a job cannot change the labels the next one sees.
    with pytest.raises(ValueError, match="read-only"):
        train.targets[0] = 3
    # Another dataset id over the same file is a separate entry.
    assert cache.open_splits("npz", location, dataset_id="ds2")[1] == "miss"


def test_changed_content_at_the_same_path_is_read_again_not_served_stale(tmp_path):
    location = _npz(tmp_path / "d.npz", value=10)
    (train, _), _ = cache.open_splits("npz", location, dataset_id="ds")
    assert float(train.images(np.array([0])).max()) == pytest.approx(10 / 255)
    _npz(tmp_path / "d.npz", value=200)  # rewritten in place, same size, same name
    (again, _), used = cache.open_splits("npz", location, dataset_id="ds")
    assert used == "miss"
    assert float(again.images(np.array([0])).max()) == pytest.approx(200 / 255)
    # Replaced by another file and the clock set back: still read afresh (inode, ctime).
    other = _npz(tmp_path / "other.npz", value=50)
    stat = os.stat(location)
    os.replace(other, location)
    os.utime(location, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (third, _), used = cache.open_splits("npz", location, dataset_id="ds")
    assert used == "miss"
    assert float(third.images(np.array([0])).max()) == pytest.approx(50 / 255)


def test_the_byte_bound_evicts_the_least_recently_used(tmp_path):
    a, b, c = (_npz(tmp_path / f"{name}.npz", n=400) for name in "abc")
    cache.open_splits("npz", a, dataset_id="a")
    one = cache.DATASETS.size_bytes
    assert one > 400 * 36  # the images, labels and ids of both splits
    cache.configure(int(one * 2.5) * 8 // 7)  # datasets get 7/8: room for two, not three
    assert cache.DATASETS.max_bytes < 3 * one
    for location, name in ((a, "a"), (b, "b"), (a, "a"), (c, "c")):
        cache.open_splits("npz", location, dataset_id=name)
    # b was used least recently when c came in: out; a (used again) stayed.
    assert cache.DATASETS.evictions == 1
    assert cache.open_splits("npz", a, dataset_id="a")[1] == "hit"
    assert cache.open_splits("npz", b, dataset_id="b")[1] == "miss"
    assert cache.DATASETS.size_bytes <= cache.DATASETS.max_bytes
    # Larger than the whole bound: read, never kept.
    cache.configure(one // 2)
    assert cache.open_splits("npz", a, dataset_id="a")[1] == "miss"
    assert len(cache.DATASETS) == 0


def test_off_reads_afresh_every_time(tmp_path):
    cache.configure(0)
    location = _npz(tmp_path / "d.npz")
    assert cache.open_splits("npz", location)[1] == "off"
    assert cache.open_splits("npz", location)[1] == "off"
    assert cache.network({"a": 1}, lambda: torch.nn.Linear(2, 2))[1] == "off"
    assert cache.stats()["datasets"]["entries"] == 0


def test_image_folders_are_not_cached(tmp_path):
    (tmp_path / "cat").mkdir()
    assert cache.fingerprint("image_folder", str(tmp_path)) is None


def test_a_network_is_handed_out_as_a_fresh_copy_each_time():
    spec = {"architecture": "tiny_cnn", "args": {"in_channels": 1}, "classes": 10}

    def build() -> torch.nn.Module:
        return architectures.build_classifier("tiny_cnn", 10, {"in_channels": 1})

    first, used = cache.network(spec, build)
    pristine = {k: v.clone() for k, v in first.state_dict().items()}
    first.load_state_dict(trained_state())  # one job's weights
    second, again = cache.network(spec, build)
    assert (used, again) == ("miss", "hit")
    assert second is not first
    for name, tensor in second.state_dict().items():
        assert torch.equal(tensor, pristine[name]), name
    # Another architecture spec is another entry.
    assert cache.network({**spec, "classes": 9}, build)[1] == "miss"


def test_a_job_served_from_the_cache_computes_what_an_uncached_one_does(tmp_path):
    weights = tmp_path / "w.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in trained_state().items()}, weights)
    job = JobSpec(
        method="unsir",
        params=dict(SMALL_DATA_PARAMS),
        forget_classes=[3, 8],
        forget_samples=None,
        acceptance=dataclasses.asdict(acceptance.DEFAULTS["classes"]),
        reference=None,
        measure_relearn_time=False,
        architecture=ARCH["name"],
        architecture_args=dict(ARCH["args"]),
        class_names=CLASS_NAMES,
        input_spec=DIGITS_SPEC,
        dataset_kind="sklearn_digits",
        dataset_location=None,
        dataset_id="digits",
    )
    cache.configure(0)
    uncached = run(job, weights, CPU, NoProgress())
    cache.configure(64 * 1024**2)
    miss = run(job, weights, CPU, NoProgress())
    hit = run(job, weights, CPU, NoProgress())
    assert uncached.metrics["worker_cache"] == {"architecture": "off", "dataset": "off"}
    assert miss.metrics["worker_cache"] == {"architecture": "miss", "dataset": "miss"}
    assert hit.metrics["worker_cache"] == {"architecture": "hit", "dataset": "hit"}
    assert set(hit.metrics["load_seconds"]) == {"architecture", "weights", "dataset", "eval_sets"}
    for outcome in (miss, hit):
        assert outcome.metrics["after"] == uncached.metrics["after"]
        assert outcome.state is not None and uncached.state is not None
        for name, tensor in outcome.state.items():
            assert torch.equal(tensor, uncached.state[name]), name
