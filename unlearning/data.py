"""Image datasets with stable sample ids and a fixed train / held-out split.

Every source yields float images in [0, 1], shape (N, C, H, W), with integer labels. Labels and ids
are metadata: code chooses retain samples by label and asks for those images only. (Array sources
hold the whole file in memory, forget images included; what a method *reads* is what it asks for.)
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from unlearning import archives

Split = Literal["train", "test"]
KINDS = ("sklearn_digits", "fashion_mnist", "image_folder", "npz")
HELD_OUT_PERMILLE = 200  # 20% held out where a source has no split of its own
MAX_CLASSES = 100_000
MAX_NPZ_BYTES = archives.MAX_INFLATED_BYTES  # inflated: the most an .npz archive is read to


class DatasetError(ValueError):
    """A dataset source cannot be read; ``code`` is stable and machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ImageSource(Protocol):
    ids: list[str]
    targets: np.ndarray
    classes: list[str]

    def __len__(self) -> int: ...

    def images(self, idx: np.ndarray) -> torch.Tensor: ...


def is_held_out(sample_id: str) -> bool:
    """A split decided by the id alone, so it never changes when samples are added."""
    digest = hashlib.sha256(sample_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 1000 < HELD_OUT_PERMILLE


@dataclass
class ArrayImages:
    """Images held in memory as a uint8 or float tensor (N, C, H, W)."""

    data: torch.Tensor
    targets: np.ndarray
    ids: list[str]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def images(self, idx: np.ndarray) -> torch.Tensor:
        batch = self.data[torch.as_tensor(idx, dtype=torch.long)]
        if batch.dtype == torch.uint8:
            return batch.float().div_(255.0)
        return batch.float()

    def subset(self, mask: np.ndarray) -> ArrayImages:
        keep = np.flatnonzero(mask)
        return ArrayImages(
            self.data[torch.as_tensor(keep, dtype=torch.long)],
            self.targets[keep],
            [self.ids[i] for i in keep],
            self.classes,
        )


@dataclass
class FolderImages:
    """Files read lazily from an ImageFolder tree (one sub-folder per class)."""

    root: Path
    paths: list[str]
    targets: np.ndarray
    ids: list[str]
    classes: list[str]
    size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def images(self, idx: np.ndarray) -> torch.Tensor:
        return torch.stack([self._load(self.paths[int(i)]) for i in idx])

    def _load(self, rel: str) -> torch.Tensor:
        # Checked again at each read: a link may have been swapped in since the listing.
        path = inside(self.root, rel)
        with Image.open(path) as opened:
            img = opened.convert("RGB")
        if self.size is not None:
            img = img.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8).copy()
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def inside(root: Path, rel: str) -> Path:
    """``root / rel`` with every link followed, refused when it leads outside ``root``: a
    symlink in a dataset folder must not read files the server keeps elsewhere."""
    real_root = root.resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(real_root):
        raise DatasetError(
            "dataset_location_forbidden",
            f"{rel} links outside the dataset folder; such links are refused",
        )
    return path


def open_split(
    kind: str,
    location: str | None,
    split: Split,
    size: tuple[int, int] | None = None,
    limits: archives.InflateLimits | None = None,
) -> ImageSource:
    """Open one split of a registered dataset. ``location`` is a folder or an .npz file, which
    may inflate as far as ``limits`` (an upload's; default: MAX_NPZ_BYTES by the zip directory,
    for a stored file, checked in full when it was registered)."""
    if kind == "sklearn_digits":
        return _digits(split)
    if location is None:
        raise DatasetError("dataset_location_missing", f"a {kind} dataset needs a location")
    path = Path(location)
    if kind == "fashion_mnist":
        return _fashion_mnist(path, split)
    if kind == "image_folder":
        return _image_folder(path, split, size)
    if kind == "npz":
        return _npz_split(_load_npz(path, limits), split)
    raise DatasetError("dataset_kind_unknown", f"unknown dataset kind {kind!r}; known: {KINDS}")


def open_splits(
    kind: str,
    location: str | None,
    size: tuple[int, int] | None = None,
    limits: archives.InflateLimits | None = None,
) -> tuple[ImageSource, ImageSource]:
    """Both splits (train, held-out); an .npz archive is read from disk once for the two."""
    if kind == "npz" and location is not None:
        arrays = _load_npz(Path(location), limits)
        return _npz_split(arrays, "train"), _npz_split(arrays, "test")
    return open_split(kind, location, "train", size), open_split(kind, location, "test", size)


def _digits(split: Split) -> ArrayImages:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ids = [str(i) for i in range(len(bunch.target))]
    data = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    full = ArrayImages(data, bunch.target.astype(np.int64), ids, [str(c) for c in range(10)])
    held_out = np.array([is_held_out(f"digits/{i}") for i in ids])
    return full.subset(held_out if split == "test" else ~held_out)


def _fashion_mnist(root: Path, split: Split) -> ArrayImages:
    from torchvision.datasets import FashionMNIST

    try:
        ds = FashionMNIST(str(root), train=(split == "train"), download=False)
    except RuntimeError as exc:
        raise DatasetError(
            "dataset_unreadable",
            f"no Fashion-MNIST under {root}: expected {root}/FashionMNIST/raw/*-ubyte ({exc})",
        ) from exc
    prefix = "train" if split == "train" else "test"
    ids = [f"{prefix}/{i}" for i in range(len(ds.targets))]
    return ArrayImages(ds.data.unsqueeze(1), ds.targets.numpy().astype(np.int64), ids, ds.classes)


def _image_folder(root: Path, split: Split, size: tuple[int, int] | None) -> FolderImages:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if not root.is_dir():
        raise DatasetError("dataset_unreadable", f"{root} is not a directory")
    split_dir = _own_split_dir(root, split)
    base = split_dir or _train_dir_or_root(root)
    try:
        classes, class_to_idx = find_classes(str(base))
        samples = make_dataset(str(base), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as exc:
        raise DatasetError("dataset_unreadable", f"not an ImageFolder tree: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise DatasetError("dataset_unreadable", f"cannot read {base}: {exc}") from exc
    rels = [Path(p).relative_to(root).as_posix() for p, _ in samples]
    for rel in rels:
        inside(root, rel)
    labels = np.array([t for _, t in samples], dtype=np.int64)
    if split_dir is None:
        keep = np.array([is_held_out(r) == (split == "test") for r in rels], dtype=bool)
        rels = [r for r, k in zip(rels, keep, strict=True) if k]
        labels = labels[keep]
    return FolderImages(root, rels, labels, list(rels), classes, size)


def _own_split_dir(root: Path, split: Split) -> Path | None:
    """ImageFolder trees with train/ and test/ (or val/) sub-folders keep their own split."""
    held_out = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if not (root / "train").is_dir() or held_out is None:
        return None  # no split of its own: hash-split (inside train/ if there is one)
    return root / "train" if split == "train" else held_out


def _train_dir_or_root(root: Path) -> Path:
    return root / "train" if (root / "train").is_dir() else root


def _load_npz(path: Path, limits: archives.InflateLimits | None) -> dict[str, np.ndarray]:
    _check_npz_size(path, limits)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError("dataset_unreadable", f"not a readable .npz archive: {exc}") from exc
    except MemoryError as exc:
        raise DatasetError("dataset_too_large", "the archive does not fit in memory") from exc
    # np.load hands back a member that is not in .npy format as raw bytes, not an array.
    raw = sorted(k for k, v in arrays.items() if not isinstance(v, np.ndarray))
    if raw:
        raise DatasetError("dataset_unreadable", f"members {raw[:5]} are not .npy arrays")
    for key in ("labels", "ids", "split", "class_names", "y_train", "y_test"):
        if key in arrays and arrays[key].ndim != 1:
            raise DatasetError("dataset_unreadable", f"{key!r} must be a 1-D array")
    return arrays


def _npz_split(arrays: dict[str, np.ndarray], split: Split) -> ArrayImages:
    if "x_train" in arrays:
        key = "train" if split == "train" else "test"
        if f"x_{key}" not in arrays or f"y_{key}" not in arrays:
            raise DatasetError("dataset_unreadable", f"the archive lacks x_{key} / y_{key}")
        images, labels = arrays[f"x_{key}"], arrays[f"y_{key}"]
        ids = [f"{key}/{i}" for i in range(len(labels))]
        mask = np.ones(len(labels), dtype=bool)
    else:
        if "images" not in arrays or "labels" not in arrays:
            raise DatasetError(
                "dataset_unreadable",
                "an .npz dataset needs arrays 'images' and 'labels' "
                "(or x_train, y_train, x_test, y_test)",
            )
        images, labels = arrays["images"], arrays["labels"]
        ids = (
            [str(s) for s in arrays["ids"]]
            if "ids" in arrays
            else [str(i) for i in range(len(labels))]
        )
        mask = _npz_split_mask(arrays, ids, split)
    data = _to_nchw(images)
    if data.shape[0] != len(labels) or len(ids) != len(labels):
        raise DatasetError("dataset_unreadable", "images, labels and ids differ in length")
    if len(set(ids)) != len(ids):
        raise DatasetError("dataset_unreadable", "sample ids are not unique")
    targets = np.asarray(labels)
    if not np.issubdtype(targets.dtype, np.integer) or targets.ndim != 1 or (targets < 0).any():
        raise DatasetError("dataset_unreadable", "labels must be a 1-D array of integers >= 0")
    if len(targets) and int(targets.max()) >= MAX_CLASSES:
        raise DatasetError("dataset_unreadable", f"labels must be below {MAX_CLASSES}")
    classes = _npz_classes(arrays, targets)
    full = ArrayImages(data, targets.astype(np.int64), ids, classes)
    return full.subset(mask)


def _check_npz_size(path: Path, limits: archives.InflateLimits | None = None) -> None:
    """Refuse archives with members that escape their folder, archives that would inflate past
    ``limits`` (by the zip directory, then, for an upload, by inflating each member, counting
    and discarding) and arrays whose own header declares more than that, or more than its
    member holds (numpy allocates what the header declares before reading). No array is
    allocated before these. Without ``limits`` (a stored file, checked in full when it was
    registered) only the directory is read, against MAX_NPZ_BYTES."""
    try:
        with zipfile.ZipFile(path) as archive:
            _refuse_escaping_members(archive)
        if limits is None:
            limits = archives.InflateLimits(MAX_NPZ_BYTES)
            archives.check_directory(path, limits)
        else:
            archives.check_inflation(path, limits)
        with zipfile.ZipFile(path) as archive:
            arrays = [
                (info.filename, _declared_bytes(archive, info), info.file_size)
                for info in archive.infolist()
            ]
    except archives.ArchiveError as exc:
        code = exc.code if exc.code == archives.INFLATES_TOO_FAR else "dataset_unreadable"
        raise DatasetError(code, str(exc)) from exc
    except DatasetError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError("dataset_unreadable", f"not a readable .npz archive: {exc}") from exc
    total = sum(declared for _, declared, _ in arrays)
    if total > limits.max_bytes:
        raise DatasetError(
            "dataset_too_large",
            f"the archive's arrays declare {total} bytes ({archives.mib(total)}), more than "
            f"the {limits.max_bytes} bytes an upload may inflate to",
        )
    lying = [name for name, declared, held in arrays if declared > held]
    if lying:
        raise DatasetError(
            "dataset_unreadable",
            f"arrays {lying[:5]} declare more data than their members hold",
        )


def _refuse_escaping_members(archive: zipfile.ZipFile) -> None:
    # The store keeps the upload as it came; whoever unpacks it later must not get files written
    # outside their folder.
    escaping = archives.escaping_members(archive.namelist())
    if escaping:
        raise DatasetError(
            "archive_path_escapes",
            f"the archive has members whose paths leave its folder: {escaping[:5]}",
        )


def _declared_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    if not info.filename.endswith(".npy"):
        return 0
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    return int(np.prod(shape, dtype=object)) * int(dtype.itemsize)


def _npz_split_mask(arrays: dict[str, np.ndarray], ids: list[str], split: Split) -> np.ndarray:
    if "split" in arrays:
        raw = arrays["split"]
        if len(raw) != len(ids):
            raise DatasetError("dataset_unreadable", "'split' differs in length from 'labels'")
        if raw.dtype.kind == "S":
            raw = raw.astype("U")
        if raw.dtype.kind == "U":
            held = raw == "test"
        elif raw.dtype.kind in "biu":
            held = raw.astype(np.int64) == 1
        else:
            raise DatasetError(
                "dataset_unreadable", "'split' must hold 'train'/'test' strings or 0/1 integers"
            )
        return np.asarray(held if split == "test" else ~held, dtype=bool)
    return np.array([is_held_out(i) == (split == "test") for i in ids], dtype=bool)


def _npz_classes(arrays: dict[str, np.ndarray], targets: np.ndarray) -> list[str]:
    n = int(targets.max()) + 1 if len(targets) else 0
    if "class_names" in arrays:
        if arrays["class_names"].dtype.kind not in "US":
            raise DatasetError("dataset_unreadable", "'class_names' must be an array of strings")
        names = [_text(c) for c in arrays["class_names"]]
        if len(names) < n:
            raise DatasetError("dataset_unreadable", "class_names has fewer entries than labels")
        return names
    return [str(i) for i in range(n)]


def _text(value: object) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DatasetError("dataset_unreadable", "a class name is not valid Unicode") from exc
    if "\x00" in text:
        raise DatasetError("dataset_unreadable", "a class name contains a NUL character")
    return text


def _to_nchw(images: np.ndarray) -> torch.Tensor:
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or 0 in images.shape[2:]:
        raise DatasetError(
            "dataset_unreadable",
            f"images must be (N,H,W), (N,H,W,C) or (N,C,H,W) of at least 1x1; got {images.shape}",
        )
    if images.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(images))
    if not np.issubdtype(images.dtype, np.floating):
        raise DatasetError("dataset_unreadable", "images must be uint8 or float in [0, 1]")
    if not np.isfinite(images).all():
        raise DatasetError("dataset_unreadable", "images contain NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))


@dataclass(frozen=True)
class InputSpec:
    """What the model expects: shape (C, H, W) and the normalisation applied before it."""

    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Map [0, 1] images of any size and 1 or 3 channels to normalised model input."""
        c, h, w = self.shape
        if x.shape[1] != c:
            x = x.mean(dim=1, keepdim=True) if c == 1 else x.expand(-1, c, -1, -1)
        if tuple(x.shape[2:]) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std


def sample_per_class(
    targets: np.ndarray,
    classes: Sequence[int] | np.ndarray,
    per_class: int,
    seed: int | np.random.Generator,
) -> np.ndarray:
    """Up to ``per_class`` random indices of each listed class (clamped to the class size).
    A Generator given as ``seed`` is used as it is, so repeated calls draw different samples."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in classes:
        idx = np.flatnonzero(targets == c)
        take = min(per_class, len(idx))
        picked.append(np.sort(rng.choice(idx, size=take, replace=False)))
    return np.concatenate(picked) if picked else np.empty(0, dtype=np.int64)


def iterate(
    source: ImageSource,
    indices: np.ndarray,
    spec: InputSpec,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (prepared images, labels); shuffled when a generator is given."""
    order = indices
    if generator is not None:
        order = indices[torch.randperm(len(indices), generator=generator).numpy()]
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield spec.prepare(source.images(idx)), torch.as_tensor(source.targets[idx])


@dataclass(frozen=True)
class SampleIndex:
    """Every sample of a dataset without its pixels: id, label and split, in the source's order."""

    ids: list[str]
    labels: np.ndarray
    held_out: np.ndarray
    classes: list[str]


def sample_index(kind: str, location: str | None) -> SampleIndex:
    """The ids sample requests name. An .npz archive is read without its images."""
    if kind == "npz" and location is not None:
        return _npz_index(Path(location))
    train, test = open_splits(kind, location)
    return SampleIndex(
        list(train.ids) + list(test.ids),
        np.concatenate([train.targets, test.targets]).astype(np.int64),
        np.r_[np.zeros(len(train), dtype=bool), np.ones(len(test), dtype=bool)],
        list(train.classes),
    )


_INDEX_MEMBERS = ("labels", "ids", "split", "class_names", "y_train", "y_test")


def _npz_index(path: Path) -> SampleIndex:
    _check_npz_size(path)
    try:
        with np.load(path, allow_pickle=False) as z:  # members inflate only when read
            arrays = {k: z[k] for k in z.files if k in _INDEX_MEMBERS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError("dataset_unreadable", f"not a readable .npz archive: {exc}") from exc
    if "y_train" in arrays and "y_test" in arrays:
        n_train, n_test = len(arrays["y_train"]), len(arrays["y_test"])
        ids = [f"train/{i}" for i in range(n_train)] + [f"test/{i}" for i in range(n_test)]
        labels = np.concatenate([arrays["y_train"], arrays["y_test"]])
        held_out = np.r_[np.zeros(n_train, dtype=bool), np.ones(n_test, dtype=bool)]
    elif "labels" in arrays:
        labels = arrays["labels"]
        ids = (
            [str(s) for s in arrays["ids"]]
            if "ids" in arrays
            else [str(i) for i in range(len(labels))]
        )
        held_out = _npz_split_mask(arrays, ids, "test")
    else:
        raise DatasetError("dataset_unreadable", "the archive has no labels")
    labels = np.asarray(labels).astype(np.int64)
    return SampleIndex(ids, labels, held_out, _npz_classes(arrays, labels))
