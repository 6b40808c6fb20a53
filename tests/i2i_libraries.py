"""Tiny image-to-image checkpoints as their libraries write them: built from the library's own
config class with a few layers, saved with ``save_pretrained`` (config.json and
model.safetensors), for 1x28x28 images."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SHAPE = [1, 28, 28]


@dataclass(frozen=True)
class Saved:
    name: str  # the architecture name a registration gives
    folder: Path
    library_class: type

    @property
    def config(self) -> dict[str, Any]:
        return dict(json.loads((self.folder / "config.json").read_text()))

    @property
    def weights(self) -> Path:
        """model.safetensors (transformers) or diffusion_pytorch_model.safetensors."""
        (found,) = self.folder.glob("*.safetensors")
        return found

    def args(self) -> dict[str, Any]:
        return {"config": self.config}


def save_mae(folder: Path, seed: int = 0) -> Saved:
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(seed)
    config = ViTMAEConfig(
        image_size=28,
        patch_size=4,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=64,
    )
    from unlearning.i2i.pretrained import set_mae_position_tables

    model = ViTMAEForPreTraining(config)
    set_mae_position_tables(model)
    model.save_pretrained(folder)
    return Saved("transformers:ViTMAEForPreTraining", folder, ViTMAEForPreTraining)


def save_unet(folder: Path, seed: int = 0, in_channels: int = 3) -> Saved:
    """A Palette-style inpainting U-Net: [masked image, mask, noised image] in, noise out."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    UNet2DModel(
        sample_size=28,
        in_channels=in_channels,
        out_channels=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
    ).save_pretrained(folder)
    return Saved("diffusers:UNet2DModel", folder, UNet2DModel)


def save_vq(folder: Path, seed: int = 0) -> Saved:
    from diffusers import VQModel

    torch.manual_seed(seed)
    VQModel(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        num_vq_embeddings=64,
        vq_embed_dim=4,
        norm_num_groups=8,
        sample_size=28,
    ).save_pretrained(folder)
    return Saved("diffusers:VQModel", folder, VQModel)


SAVERS = {"mae": save_mae, "unet": save_unet, "vq": save_vq}
