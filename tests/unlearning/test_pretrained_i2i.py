"""Image-to-image networks from transformers and diffusers checkpoints: configurations parsed by
the libraries' own classes and refused with a reason, weights checked tensor by tensor, the
method per family (only the declared encoder moves, the same timestep and noise for student,
teacher and forget target), the real generator in evaluation, and the result reloading with the
library's own from_pretrained."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.i2i_libraries import SAVERS, SHAPE, Saved
from unlearning import checkpoints, data
from unlearning.architectures import ArchitectureError
from unlearning.i2i import architectures, masks, pretrained
from unlearning.i2i import verify as v
from unlearning.i2i.train import train_inpainter
from unlearning.methods.i2i import I2IConfig, I2ITask, run_i2i

SPEC = data.InputSpec((1, 28, 28), (0.5,), (0.5,))
TRANSFORM = masks.Transform("center_square", 0.5)
DEFAULT_ENCODERS = {
    "mae": ["vit."],
    "unet": ["down_blocks.", "mid_block."],
    "vq": ["encoder.", "quant_conv."],
}


@pytest.fixture(params=sorted(SAVERS))
def saved(request: pytest.FixtureRequest, tmp_path: Path) -> Saved:
    return SAVERS[request.param](tmp_path / request.param)


def test_save_pretrained_files_fit_the_network_built_from_their_config(saved):
    net = architectures.build_on_meta(saved.name, SHAPE, saved.args())
    state = checkpoints.read_state_dict(saved.weights, budget=checkpoints.byte_budget(net))
    assert checkpoints.fit_problems(net, state) == []
    assert architectures.resolve_encoder(net, None) == DEFAULT_ENCODERS[saved.folder.name]


def test_a_mismatched_tensor_is_named(saved, tmp_path):
    state = checkpoints.read_state_dict(saved.weights)
    first = sorted(state)[3]
    state[first] = torch.zeros(3, 3)
    net = architectures.build_on_meta(saved.name, SHAPE, saved.args())
    problems = checkpoints.fit_problems(net, state)
    assert any(repr(first) in p and "shape [3, 3]" in p for p in problems)


def test_configs_are_checked_by_the_library_classes(saved):
    config = saved.config
    bogus = {**config, "auto_map": {"AutoModel": "evil.Model"}}
    if saved.name.startswith("diffusers"):
        bogus = {**config, "not_a_field": 1}
    with pytest.raises(ArchitectureError, match=r"auto_map|does not take"):
        architectures.build_on_meta(saved.name, SHAPE, {"config": bogus})
    with pytest.raises(ArchitectureError, match=r"args\.config"):
        architectures.build_on_meta(saved.name, SHAPE, {})
    with pytest.raises(ArchitectureError, match=r"channels|input_shape|image"):
        architectures.build_on_meta(saved.name, [3, 28, 28], saved.args())
    field = "num_hidden_layers" if saved.name.startswith("transformers") else "layers_per_block"
    with pytest.raises(ArchitectureError, match="integer from 1"):
        architectures.build_on_meta(saved.name, SHAPE, {"config": {**config, field: 10**9}})


@pytest.mark.parametrize(
    ("extra", "detail"),
    [
        ({"attn_implementation": "kernels-community/flash-attn"}, "attn_implementation"),
        ({"num_labels": 10**9}, "num_labels"),
        ({"id2label": {"0": "a"}}, "id2label"),
    ],
)
def test_an_mae_config_takes_only_the_networks_own_fields(tmp_path, extra, detail):
    mae = SAVERS["mae"](tmp_path / "m")
    with pytest.raises(ArchitectureError, match=detail):
        architectures.build_on_meta(mae.name, SHAPE, {"config": {**mae.config, **extra}})


@pytest.mark.parametrize(
    ("config", "args", "detail"),
    [
        ({"sample_size": "ab"}, {}, "image size"),
        ({"sample_size": [28]}, {}, "image size"),
        ({"time_embedding_type": "fourier"}, {}, "fourier"),
        ({}, {"scheduler": {"num_train_timesteps": 50}, "sampling_steps": 100}, "at most"),
        ({}, {"scheduler": {"num_train_timesteps": 50, "trained_betas": [0.1]}}, "trained_betas"),
    ],
)
def test_unet_configs_that_could_not_run_are_refused_at_registration(
    tmp_path, config, args, detail
):
    unet = SAVERS["unet"](tmp_path / "u")
    with pytest.raises(ArchitectureError, match=detail):
        architectures.build_on_meta(unet.name, SHAPE, {"config": {**unet.config, **config}, **args})


def test_an_mae_trained_on_normalised_patches_completes_from_visible_pixels_only(tmp_path):
    mae = SAVERS["mae"](tmp_path / "m")
    model = architectures.build(mae.name, SHAPE, {"config": {**mae.config, "norm_pix_loss": True}})
    x = torch.rand(2, 1, 28, 28)
    mask = masks.eval_mask(TRANSFORM, 2, 28, 28)
    changed = x * (1 - mask) + torch.rand(2, 1, 28, 28) * mask
    with torch.no_grad():
        assert torch.equal(model.complete(x, mask), model.complete(changed, mask))


def test_a_unet_needs_a_known_scheduler_and_a_layout_it_can_condition(tmp_path):
    unet = SAVERS["unet"](tmp_path / "u")
    with pytest.raises(ArchitectureError, match="not supported"):
        architectures.build_on_meta(
            unet.name, SHAPE, {**unet.args(), "scheduler": {"_class_name": "PNDMScheduler"}}
        )
    with pytest.raises(ArchitectureError, match="fits no conditioning"):
        architectures.build_on_meta(unet.name, SHAPE, {"config": {**unet.config, "in_channels": 5}})
    built = architectures.build(
        unet.name, SHAPE, {**unet.args(), "scheduler": {"num_train_timesteps": 50}}
    )
    assert isinstance(built, pretrained.DiffusionUNet)
    assert built.conditioning == "image_mask"
    assert built.train_scheduler().config.num_train_timesteps == 50


def _digits_task(model: architectures.I2IModel, encoder: list[str]) -> I2ITask:
    train = data.open_split("sklearn_digits", None, "train", size=(28, 28))
    forget = np.isin(train.targets, [3])
    return I2ITask(
        model,
        train,
        np.flatnonzero(forget)[:40],
        train,
        np.flatnonzero(~forget),
        [3],
        SPEC,
        TRANSFORM,
        encoder,
    )


def test_the_method_moves_only_the_declared_encoder_and_the_result_reloads(saved, tmp_path):
    model = architectures.build(saved.name, SHAPE, saved.args())
    checkpoints.load_into(model, checkpoints.read_state_dict(saved.weights))
    original = {k: t.clone() for k, t in model.state_dict().items()}
    encoder = architectures.resolve_encoder(model, None)
    config = I2IConfig(lr=1e-3, epochs=1, images_per_class=16, batch_size=8)
    result = run_i2i(_digits_task(model, encoder), config)
    # 16 forget images and twice as many retain ones (the small recipe), 4 of each per step.
    assert result.details["steps"] == 8
    report = v.frozen_report(model.state_dict(), original, encoder)
    assert report["frozen_unchanged"], report["frozen_changed"]
    assert report["encoder_tensors_changed"] > 0
    if saved.folder.name == "mae":  # MAE's sin-cos position table is fixed: it must stay
        key = "vit.embeddings.position_embeddings"
        assert torch.equal(model.state_dict()[key], original[key])
    # The stored form of the result reloads with the library's own loader.
    out = tmp_path / "reloaded"
    shutil.copytree(saved.folder, out)
    (out / saved.weights.name).write_bytes(
        checkpoints.canonical_bytes(checkpoints.file_state(model))
    )
    reloaded = saved.library_class.from_pretrained(out)
    for key, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[key]), key


def test_a_diffusion_batch_shares_timesteps_and_noise_with_the_teacher_and_target(tmp_path):
    unet = SAVERS["unet"](tmp_path / "u")
    model = architectures.build(unet.name, SHAPE, unet.args())
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    masks_seen: list[torch.Tensor] = []
    real_encode = type(model).encode

    def recording(self, x, mask, condition=None):  # type: ignore[no-untyped-def]
        seen.append(
            (x.detach().clone(), condition["timesteps"].clone(), condition["noise"].clone())
        )
        masks_seen.append(mask.detach().clone())
        return real_encode(self, x, mask, condition)

    type(model).encode = recording  # type: ignore[method-assign]
    try:
        run_i2i(
            _digits_task(model, ["down_blocks."]),
            I2IConfig(lr=1e-3, epochs=1, images_per_class=4, batch_size=8),
        )
    finally:
        type(model).encode = real_encode  # type: ignore[method-assign]
    retain_target, forget_target, student = seen[:3]
    n = len(retain_target[0])
    assert torch.equal(student[1][:n], retain_target[1])
    assert torch.equal(student[1][n:], forget_target[1])
    assert torch.equal(student[2][:n], retain_target[2])
    assert torch.equal(student[2][n:], forget_target[2])
    # The forget target keeps the known pixels and puts noise in the hidden ones.
    assert torch.equal(student[0][:n], retain_target[0])
    hidden = masks_seen[2][n:]
    assert torch.equal(forget_target[0] * (1 - hidden), student[0][n:] * (1 - hidden))
    assert not torch.equal(forget_target[0] * hidden, student[0][n:] * hidden)


def test_an_mae_trains_on_a_random_transform_whose_cells_miss_its_patch_grid(tmp_path):
    mae = SAVERS["mae"](tmp_path / "m")
    model = architectures.build(mae.name, SHAPE, mae.args())
    task = _digits_task(model, ["vit."])
    task.transform = masks.Transform("random", 0.4, cell=8)  # 28 px: edge cells are cut short
    result = run_i2i(task, I2IConfig(epochs=1, images_per_class=16, batch_size=8))
    assert result.details["steps"] == 8


def test_evaluation_runs_the_generator_and_is_seeded(saved):
    model = architectures.build(saved.name, SHAPE, saved.args())
    train = data.open_split("sklearn_digits", None, "train", size=(28, 28))
    group = v.Group(train, np.arange(12))
    first = v.run_completions(model, group, SPEC, TRANSFORM, torch.device("cpu"))
    again = v.run_completions(model, group, SPEC, TRANSFORM, torch.device("cpu"))
    assert torch.equal(first.completed, again.completed)
    assert torch.equal(first.embedding, again.embedding)
    # Known pixels are kept; an autoencoder is measured on its whole reconstruction.
    if model.reconstructs:
        assert bool(first.mask.all())
    else:
        keep = first.mask == 0
        assert torch.allclose(first.completed[keep], first.truth[keep], atol=1e-6)
    assert model.evaluation_passes == (10 if saved.folder.name == "unet" else 1)


def test_training_an_original_lowers_its_own_loss(saved):
    model = architectures.build(saved.name, SHAPE, saved.args())
    train = data.open_split("sklearn_digits", None, "train", size=(28, 28))
    x = SPEC.prepare(train.images(np.arange(32)))
    mask = masks.eval_mask(TRANSFORM, 32, 28, 28)

    def loss() -> float:
        with torch.no_grad():
            return float(model.training_loss(x, mask, torch.Generator().manual_seed(1)))

    before = loss()
    train_inpainter(model, train, np.arange(96), SPEC, TRANSFORM, epochs=2, lr=2e-3)
    after = loss()
    assert after < before
