"""What repeats between the jobs of one model, kept by the worker process between its jobs: the
decoded dataset and the built (untrained) architecture, bounded in bytes, least recently used
first out.

Nothing cached is ever handed out to be changed: a dataset is shared read-only (its label
arrays are marked so; the recipes only index its images, which copies them), and a network is
handed out as a deep copy of the cached one, whose weights the job then replaces with its own
checkpoint, so one job's weights never reach the next. A dataset's key holds what would change
if its content did: the dataset's id, its kind, location and image size, and the size, inode and
modification and change times of every file it is read from (a file written in place or
replaced changes its change time, which no client can set), so changed data is read again, never
served stale. Image folders are read lazily, file by file, and are not cached.

The cache is off (``max_bytes`` 0) until ``configure`` is called: the worker turns it on with
NEPENTHE_WORKER_CACHE_BYTES; tests and benchmarks that call the recipes directly read afresh.
"""

from __future__ import annotations

import copy
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from unlearning import data

Use = Literal["hit", "miss", "off"]


@dataclass
class LruBytes:
    """A least-recently-used map bounded by the bytes its values are reckoned to hold."""

    max_bytes: int = 0
    _entries: OrderedDict[Hashable, tuple[Any, int]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    hits: int = 0
    misses: int = 0
    evictions: int = 0

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return sum(n for _, n in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found[0]

    def put(self, key: Hashable, value: Any, nbytes: int) -> bool:
        """Keep ``value``, evicting the least recently used until it fits; False (nothing kept)
        when it alone is larger than the bound."""
        with self._lock:
            self._entries.pop(key, None)
            if nbytes > self.max_bytes:
                return False
            while self._entries and sum(n for _, n in self._entries.values()) + nbytes > (
                self.max_bytes
            ):
                self._entries.popitem(last=False)
                self.evictions += 1
            self._entries[key] = (value, nbytes)
            return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = self.evictions = 0


DATASETS = LruBytes()
ARCHITECTURES = LruBytes()


def configure(max_bytes: int) -> None:
    """Bound the process's cache (datasets and architectures together); 0 turns it off."""
    share = max(0, int(max_bytes))
    # Networks are small beside data: an eighth of the bound for them, the rest for datasets.
    ARCHITECTURES.max_bytes = share // 8
    DATASETS.max_bytes = share - ARCHITECTURES.max_bytes
    clear()


def clear() -> None:
    DATASETS.clear()
    ARCHITECTURES.clear()


# --------------------------------------------------------------------------------------------
# Datasets


def _stat(path: Path) -> tuple[str, int, int, int, int]:
    st = path.stat()
    return (path.name, st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def fingerprint(kind: str, location: str | None) -> tuple[Any, ...] | None:
    """What identifies the content a dataset is read from (None: not cacheable)."""
    if kind == "sklearn_digits":
        import sklearn

        return ("sklearn", sklearn.__version__)
    if location is None:
        return None
    path = Path(location)
    try:
        if kind == "npz":
            return (_stat(path),)
        if kind == "fashion_mnist":
            raw = path / "FashionMNIST" / "raw"
            return tuple(_stat(p) for p in sorted(raw.iterdir()) if p.is_file())
    except OSError:
        return None  # missing: the loader reports it
    return None  # image folders: read lazily, file by file


def _source_bytes(source: data.ImageSource) -> int:
    tensor = getattr(source, "data", None)
    images = tensor.nbytes if isinstance(tensor, torch.Tensor) else 0
    # ids are short strings: about 64 bytes each with the list's slot
    return images + int(np.asarray(source.targets).nbytes) + 64 * len(source.ids)


def _read_only(source: data.ImageSource) -> data.ImageSource:
    targets = getattr(source, "targets", None)
    if isinstance(targets, np.ndarray):
        targets.flags.writeable = False
    return source


def open_splits(
    kind: str,
    location: str | None,
    size: tuple[int, int] | None = None,
    dataset_id: str | None = None,
) -> tuple[tuple[data.ImageSource, data.ImageSource], Use]:
    """``data.open_splits``, served from the cache when the same content was read before:
    (the splits, whether the cache served them)."""
    if DATASETS.max_bytes <= 0:
        return data.open_splits(kind, location, size=size), "off"
    mark = fingerprint(kind, location)
    if mark is None:
        return data.open_splits(kind, location, size=size), "off"
    key = (dataset_id, kind, location, tuple(size) if size else None, mark)
    found = DATASETS.get(key)
    if found is not None:
        return found, "hit"
    train, test = data.open_splits(kind, location, size=size)
    splits = (_read_only(train), _read_only(test))
    # The content may have changed while it was read: keep it only if it still looks the same.
    if fingerprint(kind, location) == mark:
        DATASETS.put(key, splits, _source_bytes(train) + _source_bytes(test))
    return splits, "miss"


# --------------------------------------------------------------------------------------------
# Architectures


def _model_bytes(model: torch.nn.Module) -> int:
    return sum(t.nbytes for t in model.state_dict(keep_vars=True).values())


def network(
    spec: dict[str, Any], build: Callable[[], torch.nn.Module]
) -> tuple[torch.nn.Module, Use]:
    """A network of the architecture ``spec`` describes (every argument of ``build``, as JSON),
    built once and handed out as a copy each time: its weights are only fit to be replaced by
    a checkpoint's (``load_into`` checks every tensor), never to train from, since every copy
    starts from the same initialisation."""
    if ARCHITECTURES.max_bytes <= 0:
        return build(), "off"
    key = json.dumps(spec, sort_keys=True, default=str)
    found = ARCHITECTURES.get(key)
    if found is not None:
        return copy.deepcopy(found), "hit"
    model = build()
    ARCHITECTURES.put(key, copy.deepcopy(model), _model_bytes(model))
    return model, "miss"


def stats() -> dict[str, Any]:
    """How the process's cache has been used (for logs and benchmarks)."""
    return {
        name: {
            "entries": len(lru),
            "bytes": lru.size_bytes,
            "max_bytes": lru.max_bytes,
            "hits": lru.hits,
            "misses": lru.misses,
            "evictions": lru.evictions,
            "pid": os.getpid(),
        }
        for name, lru in (("datasets", DATASETS), ("architectures", ARCHITECTURES))
    }
