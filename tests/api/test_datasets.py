"""Registering the real Fashion-MNIST files (Debian package dataset-fashion-mnist)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.api.conftest import BACKENDS
from tests.conftest import FASHION_ROOT, new_key
from unlearning.data import is_held_out

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def fashion_root() -> Path:
    root = FASHION_ROOT
    raw = root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    assert raw.is_file(), f"run scripts/fashion_mnist.sh {root} first (scripts/test.sh does)"
    return root


def test_register_fashion_mnist(api, fashion_root):
    body = {"name": "fashion", "kind": "fashion_mnist", "location": str(fashion_root)}
    response = api.post("/v1/datasets", json=body)
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert (dataset["train_count"], dataset["test_count"]) == (60000, 10000)
    assert dataset["class_names"][0] == "T-shirt/top"
    assert dataset["image_shape"] == [1, 28, 28]


def test_register_digits(api):
    dataset = api.post("/v1/datasets", json={"name": "d", "kind": "sklearn_digits"}).json()
    assert dataset["train_count"] + dataset["test_count"] == 1797
    assert api.get(f"/v1/datasets/{dataset['name']}").json()["id"] == dataset["id"]


def _upload(api, tmp_path: Path, name: str, **arrays) -> dict:
    path = tmp_path / f"{name}.npz"
    np.savez(path, **arrays)
    response = api.post(
        "/v1/datasets/npz", files={"file": (path.name, path.read_bytes())}, data={"name": name}
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_sample_ids_are_listed_with_label_and_split_in_pages(api, tmp_path):
    images = np.zeros((30, 4, 4), dtype=np.uint8)
    labels = np.arange(30) % 3
    split = np.array(["test" if i % 5 == 0 else "train" for i in range(30)])
    ids = np.array([f"img-{i:03d}" for i in range(30)])
    class_names = np.array(["cat", "dog", "owl"])
    _upload(
        api,
        tmp_path,
        "named",
        images=images,
        labels=labels,
        ids=ids,
        split=split,
        class_names=class_names,
    )

    first = api.get("/v1/datasets/named/samples", params={"split": "train", "limit": 10}).json()
    assert first["total"] == 24 and len(first["items"]) == 10
    assert first["items"][0] == {"id": "img-001", "split": "train", "label": 1, "class_name": "dog"}
    seen = [s["id"] for s in first["items"]]
    token = first["next_page_token"]
    while token:
        page = api.get(
            "/v1/datasets/named/samples",
            params={"split": "train", "limit": 10, "page_token": token},
        ).json()
        seen += [s["id"] for s in page["items"]]
        token = page["next_page_token"]
    assert seen == [f"img-{i:03d}" for i in range(30) if i % 5]

    owls = api.get("/v1/datasets/named/samples", params={"label": 2, "split": "test"}).json()
    assert [s["id"] for s in owls["items"]] == ["img-005", "img-020"]
    assert owls["next_page_token"] is None


def test_an_npz_without_ids_lists_row_indices_and_its_hash_split(api, tmp_path):
    """The documented defaults: ids are row indices as text; without ``split`` the held-out
    fifth is chosen by a hash of each id, the same split the jobs use."""
    dataset = _upload(
        api, tmp_path, "plain", images=np.zeros((50, 4, 4), np.uint8), labels=np.arange(50) % 5
    )
    listed = api.get("/v1/datasets/plain/samples", params={"limit": 100}).json()
    assert [s["id"] for s in listed["items"]] == [str(i) for i in range(50)]
    train = [s["id"] for s in listed["items"] if s["split"] == "train"]
    assert len(train) == dataset["train_count"]
    assert all(is_held_out(s["id"]) == (s["split"] == "test") for s in listed["items"])


def test_sample_listing_refuses_foreign_datasets_and_forged_tokens(api):
    api.post("/v1/datasets", json={"name": "d", "kind": "sklearn_digits"})
    digits = api.get("/v1/datasets/d/samples", params={"split": "train", "limit": 5}).json()
    assert digits["items"][0]["id"] == "0" and digits["total"] > 1000
    forged = api.get("/v1/datasets/d/samples", params={"page_token": "-1"})
    assert forged.status_code == 422 and forged.json()["code"] == "invalid_page_token"
    other = api.get(
        "/v1/datasets/d/samples", headers={"Authorization": f"Bearer {new_key('globex')}"}
    )
    assert other.status_code == 404 and other.json()["code"] == "dataset_not_found"
