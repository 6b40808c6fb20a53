"""Registering the real Fashion-MNIST files (Debian package dataset-fashion-mnist)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.conftest import BACKENDS
from tests.conftest import FASHION_ROOT

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
