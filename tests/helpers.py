"""Builders shared by the tests: a small trained digits classifier and its registration."""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Any

import numpy as np
import safetensors.torch
import torch

from unlearning import architectures, data
from unlearning.train import train_classifier

SPEC = data.InputSpec((1, 8, 8), (0.5,), (0.5,))
ARCH = {"name": "tiny_cnn", "args": {"in_channels": 1}}
CLASS_NAMES = [str(i) for i in range(10)]
SMALL_DATA_PARAMS = {"repair_epochs": 3, "repair_batch_size": 32, "seed": 0}


def model_body(name: str = "digits-cnn") -> dict[str, Any]:
    return {
        "name": name,
        "task": "classification",
        "architecture": ARCH,
        "input_shape": [1, 8, 8],
        "normalization": {"mean": [0.5], "std": [0.5]},
        "class_names": CLASS_NAMES,
    }


@lru_cache
def trained_state() -> dict[str, torch.Tensor]:
    """tiny_cnn trained on the digits train split (about 2 s on CPU); cached per process."""
    train = data.open_split("sklearn_digits", None, "train")
    torch.manual_seed(0)
    model = architectures.build_classifier("tiny_cnn", 10, {"in_channels": 1})
    train_classifier(model, train, np.arange(len(train)), SPEC, epochs=15, lr=3e-3, batch_size=64)
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_model() -> torch.nn.Module:
    model = architectures.build_classifier("tiny_cnn", 10, {"in_channels": 1})
    model.load_state_dict(trained_state())
    return model


def safetensors_bytes(state: dict[str, torch.Tensor] | None = None) -> bytes:
    return safetensors.torch.save(state or trained_state())


def torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def assert_forgotten_toward_held_out(before: dict[str, Any], after: dict[str, Any]) -> None:
    """``unlearning.verify.measure`` reports of a sample deletion: the forgotten samples' entropy
    membership score fell and now sits nearer the held-out level than the training level, while
    retain accuracy stays within 2 points."""
    mia_before, mia_after = before["mia"]["entropy"], after["mia"]["entropy"]
    score = mia_after["forget_member_score"]
    assert score < mia_before["forget_member_score"]
    assert abs(score - mia_after["test_member_score"]) < abs(
        score - mia_after["retain_member_score"]
    )
    assert after["retain_accuracy"] >= before["retain_accuracy"] - 0.02


@lru_cache
def i2i_trained_state() -> dict[str, torch.Tensor]:
    """The demo's masked autoencoder trained to inpaint digits (about 15 s); cached per process."""
    from client.demo_i2i import train_original

    return train_original()
