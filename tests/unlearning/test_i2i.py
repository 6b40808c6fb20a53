"""I2I encoder unlearning as a library: networks, masks, noise, metrics with known answers, the
method's invariants (only the encoder moves, same mask for student, teacher and noise, seeded),
and forgetting on real digits."""

from __future__ import annotations

import io
import math
from dataclasses import asdict, replace
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from client.demo_i2i import ARCH_ARGS, ARCH_NAME, SMALL_MODEL_PARAMS, SPEC, TRANSFORM
from tests.helpers import i2i_trained_state
from unlearning import acceptance, data
from unlearning.architectures import ArchitectureError
from unlearning.i2i import architectures, masks
from unlearning.i2i import verify as v
from unlearning.methods.i2i import (
    EmptySet,
    I2IConfig,
    I2ITask,
    defaults_for,
    learning_rate,
    recipe_family,
    run_i2i,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize("name", sorted(architectures.BUILTIN))
def test_hidden_pixels_never_reach_the_completion(name):
    torch.manual_seed(0)
    model = architectures.build(name, (1, 16, 16)).eval()
    x = torch.randn(3, 1, 16, 16)
    mask = masks.center_square(3, 16, 16, 0.5)
    altered = x + 5.0 * mask * torch.randn_like(x)
    with torch.no_grad():
        assert torch.equal(model(x, mask), model(altered, mask))
        features = model.encode(x, mask)
    assert isinstance(features, list) and features
    assert model(x, mask).shape == x.shape
    names = [n for n, _ in model.named_parameters()]
    assert all(n.startswith(("encoder.", "decoder.")) for n in names)


def test_the_unet_encoder_returns_every_input_block_and_the_middle():
    model = architectures.build("unet_inpainter", (1, 16, 16), {"base": 4, "levels": 2})
    shapes = [
        tuple(f.shape) for f in model.encode(torch.zeros(2, 1, 16, 16), torch.zeros(2, 1, 16, 16))
    ]
    assert shapes == [(2, 4, 16, 16), (2, 8, 8, 8), (2, 16, 4, 4)]


def test_architecture_arguments_and_declared_encoders_are_checked():
    with pytest.raises(ArchitectureError, match="multiple of patch_size"):
        architectures.build("mae_vit", (1, 10, 10), {"patch_size": 4})
    with pytest.raises(ArchitectureError, match="input_shape"):
        architectures.build("mae_vit", (1, 16, 16), {"image_size": 16})
    with pytest.raises(ArchitectureError, match="unknown image-to-image"):
        architectures.build("tiny_cnn", (1, 16, 16))
    net = architectures.build_on_meta("mae_vit", (1, 16, 16))
    architectures.check_input_shape(net, (1, 16, 16))
    assert architectures.resolve_encoder(net, None) == ["encoder."]
    assert architectures.resolve_encoder(net, ["encoder.blocks."]) == ["encoder.blocks."]
    with pytest.raises(ArchitectureError, match="decoder parameters"):
        architectures.resolve_encoder(net, ["decoder."])
    with pytest.raises(ArchitectureError, match="names no parameter"):
        architectures.resolve_encoder(net, ["encoder.nothing"])
    assert architectures.family_of("mae_vit") == "vqgan"
    assert architectures.family_of("unet_inpainter") == "diffusion"


def test_masks_hide_what_the_transform_says():
    square = masks.eval_mask(masks.Transform("center_square", 0.5), 2, 16, 16)
    assert square.sum(dim=(1, 2, 3)).tolist() == [64.0, 64.0]
    assert square[0, 0, 4:12, 4:12].all() and square[0, 0, :4].sum() == 0
    border = masks.eval_mask(masks.Transform("outpaint", 0.25), 1, 16, 16)
    assert border.sum() == 16 * 16 - 8 * 8 and border[0, 0, 4:12, 4:12].sum() == 0
    cells = masks.Transform("random", 0.5, cell=4)
    first, again = masks.eval_mask(cells, 3, 16, 16), masks.eval_mask(cells, 3, 16, 16)
    assert torch.equal(first, again)  # evaluation masks are fixed
    assert first.sum(dim=(1, 2, 3)).tolist() == [128.0, 128.0, 128.0]
    gen = torch.Generator().manual_seed(0)
    one, two = (masks.train_mask(cells, 8, 16, 16, gen) for _ in range(2))
    assert not torch.equal(one, two)  # training masks are random
    assert ((one == 0) | (one == 1)).all()
    for bad in (("outpaint", 0.5), ("center_square", 1.0), ("random", 0.0)):
        with pytest.raises(ValueError, match="size"):
            masks.Transform(*bad)  # type: ignore[arg-type]


def test_noise_takes_the_statistics_of_the_batch_the_model_sees():
    # The batch as the model sees it (its size and channels), in [0, 1]: mean 0.5, sd 0.1.
    pixels = 0.5 + 0.1 * torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    spec = data.InputSpec((1, 16, 16), (0.5,), (0.5,))
    gen = torch.Generator().manual_seed(0)
    noise = masks.noise_input(pixels, 16, "normal_batchstats", spec, gen)
    assert noise.shape == (16, 1, 16, 16)
    back = noise * 0.5 + 0.5  # un-normalised
    assert back.min() >= 0 and back.max() <= 1
    assert float(back.mean()) == pytest.approx(float(pixels.mean()), abs=0.01)
    assert float(back.std()) == pytest.approx(float(pixels.std()), rel=0.05)
    # Pixel noise, not smooth: neighbouring pixels are uncorrelated.
    pairs = torch.stack([back[..., :-1].flatten(), back[..., 1:].flatten()])
    assert abs(float(torch.corrcoef(pairs)[0, 1])) < 0.05
    constant = masks.noise_input(pixels, 4, "constant", spec, gen) * 0.5 + 0.5
    assert torch.allclose(constant, torch.full((4, 1, 16, 16), float(pixels.mean())), atol=1e-6)
    with pytest.raises(ValueError, match="unknown noise"):
        masks.noise_input(pixels, 4, "pink", spec, gen)


def test_an_empty_forget_or_retain_set_is_refused_before_any_training():
    model = architectures.build("unet_inpainter", (1, 8, 8), {"base": 4, "levels": 1})
    task = _digits_task(model, [3])
    with pytest.raises(EmptySet, match="forget set"):
        run_i2i(replace(task, forget_idx=np.empty(0, dtype=np.int64)), I2IConfig())
    with pytest.raises(EmptySet, match="retain set"):
        run_i2i(replace(task, retain_idx=np.empty(0, dtype=np.int64)), I2IConfig())


def test_metrics_give_known_answers():
    truth = torch.full((2, 1, 8, 8), 0.5)
    mask = masks.center_square(2, 8, 8, 0.5)
    off = truth + 0.1 * mask  # error 0.1 on every hidden pixel: MSE 0.01, PSNR 20 dB
    mse = v.region_mse(off, truth, mask)
    assert torch.allclose(mse, torch.full((2,), 0.01))
    assert torch.allclose(v.psnr(mse), torch.full((2,), 20.0))
    assert float(v.psnr(v.region_mse(truth, truth, mask))[0]) == 100.0
    pattern = torch.rand(2, 1, 8, 8)
    assert torch.allclose(v.region_ssim(pattern, pattern, mask), torch.ones(2))
    assert float(v.region_ssim(pattern, 1 - pattern, mask)[0]) < 0
    feats = torch.randn(300, 4, generator=torch.Generator().manual_seed(0))
    assert v.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-4)
    shift = torch.tensor([3.0, 0.0, 4.0, 0.0])
    assert v.frechet_distance(feats, feats + shift) == pytest.approx(25.0, abs=1e-3)
    assert v.frechet_distance(feats[:1], feats) is None


class _Recorder(architectures.BuiltinI2I):
    """A one-layer encoder/decoder that records every (input, mask) its encoder sees; the list is
    shared with the deep copy the method takes as teacher."""

    calls: ClassVar[list[tuple[torch.Tensor, torch.Tensor]]] = []

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Conv2d(2, 4, 3, padding=1)
        self.decoder = nn.Conv2d(4, 1, 3, padding=1)

    def features(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        self.calls.append((x.detach().clone(), mask.detach().clone()))
        return [self.encoder(torch.cat([x * (1 - mask), mask], dim=1))]

    def decode(self, features: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:  # noqa: ARG002
        return self.decoder(features[0])


def _digits_task(model: architectures.I2IModel, classes: list[int], **kw: object) -> I2ITask:
    train = data.open_split("sklearn_digits", None, "train")
    forget = np.isin(train.targets, classes)
    return I2ITask(
        model,
        train,
        np.flatnonzero(forget),
        train,
        np.flatnonzero(~forget),
        classes,
        data.InputSpec((1, 8, 8), (0.5,), (0.5,)),
        masks.Transform("center_square", 0.5),
        ["encoder."],
        CPU,
        **kw,
    )  # type: ignore[arg-type]


def test_the_same_mask_goes_to_student_teacher_and_noise_and_only_the_encoder_moves():
    _Recorder.calls.clear()
    torch.manual_seed(0)
    model = _Recorder()
    original = {k: t.clone() for k, t in model.state_dict().items()}
    config = I2IConfig(epochs=1, batch_size=8, images_per_class=8, lr=1e-2)
    result = run_i2i(_digits_task(model, [3]), config)
    # Per step: teacher on retain, teacher on noise, student on the whole batch.
    calls = _Recorder.calls
    assert len(calls) == 3 * result.details["steps"]
    for (x_r, m_r), (noise, m_f), (x, m) in zip(calls[0::3], calls[1::3], calls[2::3], strict=True):
        half = len(x_r)
        assert torch.equal(m[:half], m_r) and torch.equal(m[half:], m_f)
        assert torch.equal(x[:half], x_r)
        assert not torch.equal(x[half:], noise)  # the teacher sees noise, not the forget image
    after = model.state_dict()
    assert all(torch.equal(after[k], original[k]) for k in original if k.startswith("decoder."))
    assert any(not torch.equal(after[k], original[k]) for k in original if k.startswith("encoder."))
    assert result.details["forget_images"] == 8
    assert result.details["frozen_parameters"] == sum(p.numel() for p in model.decoder.parameters())


def test_the_method_reads_only_its_sample_of_forget_images_and_is_seeded():
    train = data.open_split("sklearn_digits", None, "train")
    read: set[int] = set()

    class Spy:
        ids, targets, classes = train.ids, train.targets, train.classes

        def __len__(self) -> int:
            return len(train)

        def images(self, idx: np.ndarray) -> torch.Tensor:
            read.update(int(i) for i in idx)
            return train.images(idx)

    def run_once() -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = architectures.build("unet_inpainter", (1, 8, 8), {"base": 4, "levels": 1})
        task = _digits_task(model, [3, 8])
        task.forget_source = task.retain_source = Spy()  # type: ignore[assignment]
        run_i2i(task, I2IConfig(epochs=1, images_per_class=5, lr=1e-3, seed=7))
        return model.state_dict()

    first = run_once()
    forget_read = read & set(np.flatnonzero(np.isin(train.targets, [3, 8])).tolist())
    assert len(forget_read) == 10  # 5 per forget class, never the rest
    second = run_once()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_recipes_follow_the_methods_doc():
    mage, palette = defaults_for("vqgan"), defaults_for("diffusion")
    assert (
        mage["alpha"],
        mage["optimizer"],
        mage["weight_decay"],
        mage["epochs"],
        mage["warmup_epochs"],
        mage["grad_clip"],
        mage["lr"],
    ) == (0.2, "adamw", 0.05, 6, 5.0, 3.0, 5e-5)
    assert (palette["alpha"], palette["optimizer"], palette["epochs"], palette["schedule"]) == (
        0.1,
        "adam",
        3,
        "constant",
    )
    shorter = I2IConfig(epochs=3).resolved("vqgan")
    assert shorter.warmup_epochs == pytest.approx(2.5)  # MAGE's 5-of-6 share of warm-up
    c = I2IConfig().resolved("vqgan")
    assert learning_rate(c, 0, 10) == 0.0
    assert learning_rate(c, 50, 10) == pytest.approx(5e-5)  # end of warm-up
    assert learning_rate(c, 55, 10) == pytest.approx(2.5e-5)  # half way down the cosine
    assert learning_rate(c, 60, 10) == pytest.approx(0.0, abs=1e-12)
    small = defaults_for("vqgan/small")
    assert (small["recipe"], small["lr"], small["epochs"], small["alpha"]) == (
        "mage_small",
        1e-3,
        10,
        0.3,
    )
    assert defaults_for("diffusion/small")["recipe"] == "palette_small"
    assert (defaults_for("mae/small")["alpha"], defaults_for("vq/small")["alpha"]) == (0.6, 0.15)
    assert recipe_family("vqgan", 60_000) == "vqgan/small"
    assert recipe_family("diffusion", 86_000_000) == "diffusion"
    for bad in (
        {"lr": 0},
        {"batch_size": 1},
        {"noise_type": "pink"},
        {"recipe": "sd"},
        {"alpha": -1.0},
        {"retain_ratio": math.inf},
    ):
        with pytest.raises(ValueError):  # noqa: PT011 - each names its own field
            I2IConfig(**bad)  # type: ignore[arg-type]


def test_the_acceptance_gate_reads_psnr_drops():
    before = {"retain": {"psnr": 20.0}, "forget": {"psnr": 20.0}}
    good = {"retain": {"psnr": 19.5}, "forget": {"psnr": 17.0}}
    bad = {"retain": {"psnr": 18.0}, "forget": {"psnr": 19.0}}
    t = acceptance.I2IThresholds()
    assert asdict(t) == {"max_retain_psnr_drop": 1.0, "min_forget_psnr_drop": 1.5}
    assert acceptance.i2i_failures(t, before, good) == []
    failed = acceptance.i2i_failures(t, before, bad)
    assert [(f["check"], f["measured"]) for f in failed] == [
        ("max_retain_psnr_drop", 2.0),
        ("min_forget_psnr_drop", 1.0),
    ]
    unmeasured = {"retain": {"psnr": None}, "forget": {"psnr": 17.0}}
    assert [f["check"] for f in acceptance.i2i_failures(t, before, unmeasured)] == [
        "max_retain_psnr_drop"
    ]


def test_encoder_unlearning_forgets_real_digit_classes_and_keeps_the_rest():
    """The demo's masked autoencoder and recipe, on scikit-learn digits."""
    model = architectures.build(ARCH_NAME, SPEC.shape, ARCH_ARGS)
    model.load_state_dict(i2i_trained_state())
    original = architectures.build(ARCH_NAME, SPEC.shape, ARCH_ARGS)
    original.load_state_dict(i2i_trained_state())
    train, test = data.open_splits("sklearn_digits", None)
    forget = np.isin(train.targets, [3, 8])
    sets = v.eval_sets(train, test, np.flatnonzero(forget), [3, 8])
    before, done = v.measure(original, sets, SPEC, TRANSFORM, CPU)
    task = I2ITask(
        model,
        train,
        np.flatnonzero(forget),
        train,
        np.flatnonzero(~forget),
        [3, 8],
        SPEC,
        TRANSFORM,
        ["encoder."],
        CPU,
    )
    run_i2i(task, I2IConfig(**SMALL_MODEL_PARAMS))
    after, after_done = v.measure(model, sets, SPEC, TRANSFORM, CPU, originals=done)
    retain_drop = before["retain"]["psnr"] - after["retain"]["psnr"]  # type: ignore[index]
    forget_drop = before["forget"]["psnr"] - after["forget"]["psnr"]  # type: ignore[index]
    assert retain_drop < 1.0
    assert forget_drop > 1.5 and forget_drop > 2 * retain_drop
    assert after["forget"]["encoder_cosine"] < after["retain"]["encoder_cosine"]  # type: ignore[index]
    assert after["forget"]["fd_random"] > 2 * before["forget"]["fd_random"]  # type: ignore[index]
    assert v.weights_unchanged(model, original, ["encoder."])["frozen_unchanged"] is True
    png = v.completion_grid(done, after_done)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.height > 4 * 16
    narrower = Image.open(io.BytesIO(v.completion_grid(done, after_done, show_forget=False)))
    assert narrower.width < image.width


def test_progress_is_reported_every_step_and_can_stop_the_method():
    """A cancel arrives as an exception from the progress callback (workers/progress.py)."""
    seen: list[tuple[str, float]] = []

    class Stop(Exception):
        pass

    def progress(phase: str, fraction: float) -> None:
        seen.append((phase, fraction))
        if len(seen) == 3:
            raise Stop

    model = architectures.build("unet_inpainter", (1, 8, 8), {"base": 4, "levels": 1})
    before = {k: t.clone() for k, t in model.state_dict().items()}
    with pytest.raises(Stop):
        run_i2i(_digits_task(model, [3], progress=progress), I2IConfig(epochs=2, lr=1e-3))
    assert [p for p, _ in seen] == ["i2i"] * 3
    assert 0 < seen[0][1] < seen[1][1] < seen[2][1] < 1
    decoder = [k for k in before if k.startswith("decoder.")]
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in decoder)
