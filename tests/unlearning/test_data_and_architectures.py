"""Dataset sources and architecture registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from unlearning import architectures, data


def test_digits_split_is_stable_and_disjoint():
    train = data.open_split("sklearn_digits", None, "train")
    test = data.open_split("sklearn_digits", None, "test")
    assert len(train) + len(test) == 1797
    assert not set(train.ids) & set(test.ids)
    assert data.open_split("sklearn_digits", None, "test").ids == test.ids
    assert set(np.unique(test.targets)) == set(range(10))
    images = train.images(np.arange(4))
    assert images.shape == (4, 1, 8, 8)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0


def test_npz_with_ids_split_and_class_names(tmp_path):
    path = tmp_path / "d.npz"
    images = np.random.default_rng(0).integers(0, 255, (6, 5, 5, 3), dtype=np.uint8)
    np.savez(
        path,
        images=images,
        labels=np.array([0, 1, 2, 0, 1, 2]),
        ids=np.array([f"s{i}" for i in range(6)]),
        split=np.array([0, 0, 0, 0, 1, 1]),
        class_names=np.array(["cat", "dog", "eel"]),
    )
    train = data.open_split("npz", str(path), "train")
    test = data.open_split("npz", str(path), "test")
    assert train.ids == ["s0", "s1", "s2", "s3"]
    assert test.ids == ["s4", "s5"]
    assert train.classes == ["cat", "dog", "eel"]
    assert train.images(np.array([0])).shape == (1, 3, 5, 5)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": np.zeros((3, 4, 4))}, "needs arrays"),
        ({"images": np.zeros((3, 4, 4)), "labels": np.zeros(2, dtype=int)}, "differ in length"),
        ({"images": np.zeros((2, 4, 4)), "labels": np.array([0.5, 1.0])}, "integers"),
        ({"images": np.full((2, 4, 4), np.nan), "labels": np.array([0, 1])}, "NaN"),
    ],
)
def test_npz_errors_are_clear(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(data.DatasetError, match=message):
        data.open_split("npz", str(path), "train")


def test_image_folder_hash_split_and_resize(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(30):
            image = Image.new("RGB", (10 + i % 3, 12), color=(i * 8, 0, 0))
            image.save(tmp_path / cls / f"{i}.png")
    train = data.open_split("image_folder", str(tmp_path), "train", size=(8, 8))
    test = data.open_split("image_folder", str(tmp_path), "test", size=(8, 8))
    assert len(train) + len(test) == 60
    assert len(test) > 0
    assert not set(train.ids) & set(test.ids)
    assert train.classes == ["a", "b"]
    assert train.images(np.array([0, 1])).shape == (2, 3, 8, 8)


def test_input_spec_adapts_channels_and_size():
    spec = data.InputSpec((3, 16, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    out = spec.prepare(torch.full((2, 1, 8, 8), 0.75))
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(out, torch.ones_like(out))


def test_every_torchvision_classifier_is_listed_and_builds_on_meta():
    names = architectures.torchvision_classifiers()
    assert {"resnet18", "vit_b_16", "mobilenet_v3_small"} <= set(names)
    model = architectures.build_on_meta("resnet18", 7)
    assert model.fc.out_features == 7
    architectures.check_input_shape(model, (3, 32, 32), 7)


@pytest.mark.parametrize(
    ("name", "args", "shape", "message"),
    [
        ("no_such_net", {}, (3, 32, 32), "unknown architecture"),
        ("tiny_cnn", {"depth": 3}, (1, 8, 8), "cannot build"),
        ("tiny_cnn", {"in_channels": 3}, (1, 8, 8), "does not fit"),
        ("vit_b_16", {}, (3, 32, 32), "does not fit"),
        ("resnet18", {"weights": "DEFAULT"}, (3, 32, 32), "cannot be downloaded"),
    ],
)
def test_bad_architectures_are_explained(name, args, shape, message):
    def build_and_check() -> None:
        model = architectures.build_on_meta(name, 10, args)
        architectures.check_input_shape(model, shape, 10)

    with pytest.raises(architectures.ArchitectureError, match=message):
        build_and_check()


@pytest.mark.parametrize(
    ("name", "args", "shape"),
    [
        ("tiny_cnn", {"in_channels": 1}, (1, 8, 8)),
        ("small_resnet", {}, (3, 32, 32)),
        ("mlp", {"in_features": 64}, (1, 8, 8)),
    ],
)
def test_builtin_networks_fit_small_images(name, args, shape):
    model = architectures.build_classifier(name, 10, args)
    assert model(torch.zeros(2, *shape)).shape == (2, 10)


def test_image_folder_with_train_but_no_test_is_hash_split_inside_train(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(30):
            Image.new("RGB", (8, 8)).save(tmp_path / "train" / cls / f"{i}.png")
    train = data.open_split("image_folder", str(tmp_path), "train")
    test = data.open_split("image_folder", str(tmp_path), "test")
    assert train.classes == test.classes == ["a", "b"]
    assert len(train) + len(test) == 60
    assert len(test) > 0
    assert not set(train.ids) & set(test.ids)


@pytest.mark.parametrize("kind", ["sklearn_digits", "npz"])
def test_open_splits_matches_open_split(tmp_path, kind):
    location = None
    if kind == "npz":
        location = str(tmp_path / "d.npz")
        np.savez(location, images=np.zeros((40, 4, 4), np.uint8), labels=np.arange(40) % 4)
    train, test = data.open_splits(kind, location)
    assert train.ids == data.open_split(kind, location, "train").ids
    assert test.ids == data.open_split(kind, location, "test").ids
    assert len(train) > 0
    assert len(test) > 0


def _folder_of_images(root, classes=("a", "b"), per=4):
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per):
            Image.new("RGB", (8, 8), color=(i * 40, 0, 0)).save(root / cls / f"{i}.png")


def test_a_symlink_out_of_an_image_folder_is_refused_when_listed(tmp_path):
    _folder_of_images(tmp_path / "data")
    _folder_of_images(tmp_path / "private", classes=("secret",))
    (tmp_path / "data" / "c").symlink_to(tmp_path / "private" / "secret", target_is_directory=True)
    with pytest.raises(data.DatasetError) as refused:
        data.open_split("image_folder", str(tmp_path / "data"), "train")
    assert refused.value.code == "dataset_location_forbidden"
    # A link that stays inside the folder is fine.
    (tmp_path / "data" / "c").unlink()
    (tmp_path / "data" / "c").symlink_to(tmp_path / "data" / "a", target_is_directory=True)
    assert len(data.open_split("image_folder", str(tmp_path / "data"), "train")) > 0


def test_a_link_swapped_in_after_listing_is_refused_when_read(tmp_path):
    _folder_of_images(tmp_path / "data")
    _folder_of_images(tmp_path / "private", classes=("secret",))
    train = data.open_split("image_folder", str(tmp_path / "data"), "train")
    first = tmp_path / "data" / train.ids[0]
    first.unlink()
    first.symlink_to(tmp_path / "private" / "secret" / "0.png")
    with pytest.raises(data.DatasetError):
        train.images(np.array([0]))


@pytest.mark.parametrize(
    ("name", "args", "named"),
    [
        ("small_vit", {"hidden_dim": 10**6}, "hidden_dim"),
        ("small_vit", {"num_layers": 10**5}, "num_layers"),
        ("small_vit", {"patch_size": 2.5}, "patch_size"),
        ("mlp", {"hidden": 10**9}, "hidden"),
        ("mlp", {"in_features": True}, "in_features"),
        ("tiny_cnn", {"width": 10**7}, "width"),
        ("tiny_cnn", {"depth": 3}, "depth"),
        ("small_resnet", {"blocks": [1] * 9}, "blocks"),
        # torchvision: structure lists are not accepted, and scalars are bounded.
        ("mobilenet_v2", {"inverted_residual_setting": [[1, 16, 10**6, 1]]}, "inverted_residual"),
        ("mobilenet_v2", {"width_mult": 1e308}, "width_mult"),
        ("vit_b_16", {"image_size": 10**6}, "image_size"),
        ("resnet18", {"replace_stride_with_dilation": [1, 0, 0]}, "replace_stride"),
        ("densenet121", {"drop_rate": float("nan")}, "drop_rate"),
    ],
)
def test_unbounded_arguments_are_refused_before_building(name, args, named, monkeypatch):
    def unbuilt(*args, **kwargs):
        raise AssertionError("the network was built before its arguments were checked")

    monkeypatch.setattr(architectures, "BUILTIN", dict.fromkeys(architectures.BUILTIN, unbuilt))
    monkeypatch.setattr(architectures.torchvision.models, "get_model", unbuilt)
    with pytest.raises(architectures.ArchitectureError, match=f"argument '{named}"):
        architectures.build_on_meta(name, 10, args)


@pytest.mark.parametrize(
    ("name", "args", "named"),
    [
        ("mae_vit", {"depth": 10**6}, "depth"),
        ("mae_vit", {"mlp_ratio": 1e9}, "mlp_ratio"),
        ("unet_inpainter", {"levels": 40}, "levels"),
        ("unet_inpainter", {"channels": 3}, "channels"),
    ],
)
def test_unbounded_image_to_image_arguments_are_refused(name, args, named):
    from unlearning.i2i import architectures as i2i

    with pytest.raises(architectures.ArchitectureError, match=f"argument '{named}'"):
        i2i.build_on_meta(name, [1, 32, 32], args)


def test_bounded_arguments_still_build_and_the_parameter_count_caps_the_rest():
    model = architectures.build_on_meta("vit_b_16", 10, {"image_size": 32, "weights": None})
    architectures.check_input_shape(model, (3, 32, 32), 10)
    mobilenet = architectures.build_on_meta("mobilenet_v2", 10, {"width_mult": 0.5})
    architectures.check_size(mobilenet, 10**7)
    wide = architectures.build_on_meta("mlp", 10, {"in_features": 3 * 4096 * 4096, "hidden": 4096})
    assert architectures.parameter_count(wide) > 2 * 10**11  # on meta: nothing allocated
    with pytest.raises(architectures.ArchitectureError, match="parameters and buffers"):
        architectures.check_size(wide, 10**9)
