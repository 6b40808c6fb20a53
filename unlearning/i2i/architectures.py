"""Built-in image-to-image networks: a ViT masked autoencoder and a convolutional U-Net inpainter.

Every network here is an ``I2IModel``: ``encode(x, mask)`` returns a list of feature tensors (one
for the ViT, one per level for the U-Net) and ``decode(features, mask)`` predicts the whole image.
All parameters that ``encode`` uses live under ``encoder.``, the rest under ``decoder.``, so the
part unlearning trains is declared by parameter-name prefixes and the decoder can be checked to
stay bit-for-bit unchanged. No network shares weights between its encoder and its decoder (MAGE's
tied output embedding is the pitfall the methods doc warns about).

Images are model input (normalised); ``mask`` is (B, 1, H, W), 1 where pixels are hidden. Every
network zeroes hidden pixels itself, so nothing hidden can leak into a completion.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from unlearning.architectures import (
    MAX_DIM,
    MAX_HEADS,
    MAX_LAYERS,
    MAX_SIDE,
    MAX_WIDTH,
    ArchitectureError,
    Arg,
    check_args,
)
from unlearning.i2i.masks import Transform, train_mask

Features = list[torch.Tensor]
# What else an encoder reads beside the image and the mask, drawn once per batch so the student,
# the frozen teacher and the forget target see the same (a diffusion model's timesteps and
# noise): tensors with the batch first.
Condition = dict[str, torch.Tensor]


class I2IModel(nn.Module, ABC):
    """What the method and the evaluation need of an image-to-image network."""

    # The methods doc's per-family defaults (section 2.7): the forget weight alpha and the recipe.
    family: str = "vqgan"
    # Parameter-name prefixes unlearning may train (nothing outside feeds the encoder's
    # embedding alone), and those it trains when the registration declares none.
    encoder_scope: tuple[str, ...] = ("encoder.",)
    default_encoder: tuple[str, ...] = ("encoder.",)
    # True for autoencoders: the encoder sees the whole image and the whole output is measured.
    reconstructs: bool = False
    # Forward passes of the network per completed image (a sampler's steps).
    evaluation_passes: int = 1

    @abstractmethod
    def encode(
        self, x: torch.Tensor, mask: torch.Tensor, condition: Condition | None = None
    ) -> Features:
        """The embedding the method matches: one tensor per feature level."""

    @abstractmethod
    def complete(
        self, x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator | None = None
    ) -> torch.Tensor:
        """The whole predicted image, in model input space (``gen`` seeds any sampling)."""

    def training_condition(self, n: int, gen: torch.Generator) -> Condition | None:  # noqa: ARG002
        """The per-image condition of a training batch (None: the encoder needs none)."""
        return None

    def evaluation_condition(self, n: int, gen: torch.Generator) -> Condition | None:  # noqa: ARG002
        return None

    def forget_target(
        self,
        forget: torch.Tensor,  # noqa: ARG002
        noise: torch.Tensor,
        mask: torch.Tensor,  # noqa: ARG002
    ) -> torch.Tensor:
        """The input whose original embedding a forget image is pulled to: the noise image."""
        return noise

    def training_mask(
        self, transform: Transform, n: int, h: int, w: int, gen: torch.Generator
    ) -> torch.Tensor:
        """The random transform T of a training batch."""
        return train_mask(transform, n, h, w, gen)

    def training_loss(
        self, x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """The loss the original is trained with (to build originals in tests and benchmarks):
        squared error of the completion on the measured pixels."""
        region = torch.ones_like(mask) if self.reconstructs else mask
        err = (self.complete(x, mask, gen) - x) ** 2 * region
        return err.sum() / (region.sum() * x.shape[1]).clamp(min=1)


class BuiltinI2I(I2IModel):
    """The built-in networks: ``decode`` predicts the image from the encoder's features."""

    encoder: nn.Module
    decoder: nn.Module

    @abstractmethod
    def decode(self, features: Features, mask: torch.Tensor) -> torch.Tensor:
        """The whole predicted image, in model input space."""

    def encode(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        condition: Condition | None = None,  # noqa: ARG002
    ) -> Features:
        return self.features(x, mask)

    @abstractmethod
    def features(self, x: torch.Tensor, mask: torch.Tensor) -> Features: ...

    def complete(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        gen: torch.Generator | None = None,  # noqa: ARG002
    ) -> torch.Tensor:
        return self.decode(self.encode(x, mask), mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.complete(x, mask)


def _size(image_size: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


class _Block(nn.Module):
    """Pre-norm transformer block (plain modules, so it also builds on the meta device)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class _ViTEncoder(nn.Module):
    def __init__(
        self,
        channels: int,
        grid: tuple[int, int],
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
    ) -> None:
        super().__init__()
        self.patch = patch
        self.patch_embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x * (1 - mask)).flatten(2).transpose(1, 2)
        # A patch with any hidden pixel is a masked token (MAGE widens its masks the same way).
        hidden = F.max_pool2d(mask, self.patch).flatten(1).unsqueeze(-1)
        tokens = tokens * (1 - hidden) + self.mask_token * hidden + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


class _ViTDecoder(nn.Module):
    def __init__(
        self,
        channels: int,
        grid: tuple[int, int],
        patch: int,
        dim: int,
        decoder_dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
    ) -> None:
        super().__init__()
        self.grid, self.patch, self.channels = grid, patch, channels
        self.proj = nn.Linear(dim, decoder_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], decoder_dim))
        self.blocks = nn.ModuleList(_Block(decoder_dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(decoder_dim)
        self.head = nn.Linear(decoder_dim, patch * patch * channels)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.proj(tokens) + self.pos_embed
        for block in self.blocks:
            h = block(h)
        patches = self.head(self.norm(h)).transpose(1, 2)  # (B, p*p*C, N)
        size = (self.grid[0] * self.patch, self.grid[1] * self.patch)
        return F.fold(patches, size, kernel_size=self.patch, stride=self.patch)


class MaskedAutoencoder(BuiltinI2I):
    """A small ViT masked autoencoder: hidden patches enter the encoder as a learned mask token
    (SimMIM-style, so any mask shape works) and a light transformer decoder predicts pixels."""

    family = "vqgan"  # token-based: MAGE's recipe and alpha 0.2

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int | list[int] | tuple[int, int] = 28,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        decoder_dim: int = 64,
        decoder_depth: int = 2,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        h, w = _size(image_size)
        if patch_size < 1 or h % patch_size or w % patch_size:
            raise ArchitectureError(
                f"image size {h}x{w} is not a multiple of patch_size {patch_size}"
            )
        if dim % heads or decoder_dim % heads:
            raise ArchitectureError("dim and decoder_dim must be multiples of heads")
        grid = (h // patch_size, w // patch_size)
        self.encoder = _ViTEncoder(in_channels, grid, patch_size, dim, depth, heads, mlp_ratio)
        self.decoder = _ViTDecoder(
            in_channels, grid, patch_size, dim, decoder_dim, decoder_depth, heads, mlp_ratio
        )

    def features(self, x: torch.Tensor, mask: torch.Tensor) -> Features:
        return [self.encoder(x, mask)]

    def decode(self, features: Features, mask: torch.Tensor) -> torch.Tensor:  # noqa: ARG002
        return self.decoder(features[-1])


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: no running statistics, so a frozen part stays truly frozen.
    return nn.GroupNorm(min(8, channels), channels)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(c_in),
            nn.SiLU(),
            nn.Conv2d(c_in, c_out, 3, padding=1),
            _norm(c_out),
            nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class _UNetEncoder(nn.Module):
    """Input blocks (one resolution each, downsampling between) and the middle block."""

    def __init__(self, channels: int, base: int, levels: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(channels + 1, base, 3, padding=1)  # the mask is an input channel
        widths = [base * 2**i for i in range(levels + 1)]
        self.input_blocks = nn.ModuleList(_ResBlock(widths[i], widths[i]) for i in range(levels))
        self.downs = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1) for i in range(levels)
        )
        self.middle = nn.Sequential(
            _ResBlock(widths[-1], widths[-1]), _ResBlock(widths[-1], widths[-1])
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> Features:
        h = self.stem(torch.cat([x * (1 - mask), mask], dim=1))
        features = []
        for block, down in zip(self.input_blocks, self.downs, strict=True):
            h = block(h)
            features.append(h)
            h = down(h)
        features.append(self.middle(h))
        return features


class _UNetDecoder(nn.Module):
    def __init__(self, channels: int, base: int, levels: int) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(levels + 1)]
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(levels)
        )
        self.output_blocks = nn.ModuleList(
            _ResBlock(2 * widths[i], widths[i]) for i in range(levels)
        )
        self.out = nn.Sequential(_norm(base), nn.SiLU(), nn.Conv2d(base, channels, 3, padding=1))

    def forward(self, features: Features) -> torch.Tensor:
        h = features[-1]
        for i in reversed(range(len(self.ups))):
            h = self.output_blocks[i](torch.cat([self.ups[i](h), features[i]], dim=1))
        return self.out(h)


class UNetInpainter(BuiltinI2I):
    """A small convolutional U-Net that inpaints from the masked image and the mask (the layout
    of Palette's U-Net without the diffusion steps): its encoder is every input block plus the
    middle block, and ``encode`` returns each of their outputs."""

    family = "diffusion"  # Palette's recipe and alpha 0.1

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int | list[int] | tuple[int, int] = 28,
        base: int = 16,
        levels: int = 2,
    ) -> None:
        super().__init__()
        h, w = _size(image_size)
        if levels < 1 or h % 2**levels or w % 2**levels:
            raise ArchitectureError(
                f"image size {h}x{w} is not a multiple of 2**levels={2**levels}"
            )
        if base < 1:
            raise ArchitectureError("base must be a positive number of channels")
        self.encoder = _UNetEncoder(in_channels, base, levels)
        self.decoder = _UNetDecoder(in_channels, base, levels)

    def features(self, x: torch.Tensor, mask: torch.Tensor) -> Features:
        return list(self.encoder(x, mask))

    def decode(self, features: Features, mask: torch.Tensor) -> torch.Tensor:  # noqa: ARG002
        return self.decoder(features)


BUILTIN: dict[str, Callable[..., I2IModel]] = {
    "mae_vit": MaskedAutoencoder,
    "unet_inpainter": UNetInpainter,
}
BUILTIN_ARGS: dict[str, dict[str, Arg]] = {
    "mae_vit": {
        "patch_size": Arg(int, 1, MAX_SIDE),
        "dim": Arg(int, 1, MAX_DIM),
        "depth": Arg(int, 1, MAX_LAYERS),
        "heads": Arg(int, 1, MAX_HEADS),
        "decoder_dim": Arg(int, 1, MAX_DIM),
        "decoder_depth": Arg(int, 1, MAX_LAYERS),
        "mlp_ratio": Arg(float, 0.01, 16),
    },
    # 2**12 is the largest power of two that divides a side of at most 4096 pixels.
    "unet_inpainter": {"base": Arg(int, 1, MAX_WIDTH), "levels": Arg(int, 1, 12)},
}
ENCODER_PREFIX = "encoder."


def build(
    name: str, input_shape: tuple[int, int, int] | list[int], args: dict[str, Any] | None = None
) -> I2IModel:
    """Build an untrained I2I network for images of ``input_shape`` [C, H, W]: a built-in one by
    name, or a ``transformers:``/``diffusers:`` class from its config.json (args.config)."""
    from unlearning.i2i import pretrained  # imports the libraries: only when one is named

    args = dict(args or {})
    if pretrained.is_pretrained(name):
        return pretrained.build(name, input_shape, args)
    for taken in ("in_channels", "image_size"):
        if taken in args:
            raise ArchitectureError(f"{taken} comes from the model's input_shape; do not pass it")
    factory = BUILTIN.get(name)
    if factory is None:
        raise ArchitectureError(
            f"unknown image-to-image architecture {name!r}; built in: {sorted(BUILTIN)}; "
            f"from save_pretrained checkpoints: {sorted(LIBRARY_FAMILIES)}"
        )
    check_args(name, args, BUILTIN_ARGS[name])
    c, h, w = input_shape
    try:
        return factory(in_channels=c, image_size=(h, w), **args)
    except ArchitectureError:
        raise
    except Exception as exc:  # bad keyword arguments or sizes fail in many ways
        raise ArchitectureError(f"cannot build {name!r} with arguments {args}: {exc}") from exc


# The library classes and the family whose recipe each takes (see unlearning.i2i.pretrained).
LIBRARY_FAMILIES = {
    "transformers:ViTMAEForPreTraining": "mae",
    "diffusers:UNet2DModel": "diffusion",
    "diffusers:VQModel": "vq",
}


def family_of(name: str) -> str:
    """The family whose recipe a network takes: "vqgan" (the built-in ViT, MAGE's recipe),
    "mae" and "vq" (MAGE's recipe, their own small variants) or "diffusion" (Palette's)."""
    if name in LIBRARY_FAMILIES:
        return LIBRARY_FAMILIES[name]
    factory = BUILTIN.get(name)
    return str(getattr(factory, "family", "vqgan"))


def build_on_meta(
    name: str, input_shape: tuple[int, int, int] | list[int], args: dict[str, Any] | None = None
) -> I2IModel:
    with torch.device("meta"):
        return build(name, input_shape, args)


def check_input_shape(model: I2IModel, input_shape: tuple[int, int, int] | list[int]) -> None:
    """A forward pass on the meta device: the network must return an image of its input's shape.
    Library networks check their configuration against the shape when built, and their
    samplers index schedules that do not live on the meta device."""
    if not isinstance(model, BuiltinI2I):
        return
    shape = (2, *input_shape)
    try:
        with torch.no_grad():
            out = model.eval()(
                torch.empty(shape, device="meta"), torch.empty((2, 1, *shape[2:]), device="meta")
            )
    except Exception as exc:  # any failure of the forward pass is a shape problem
        raise ArchitectureError(f"input shape {list(input_shape)} does not fit: {exc}") from exc
    if tuple(out.shape) != shape:
        raise ArchitectureError(
            f"the network outputs shape {list(out.shape)[1:]}, expected {list(input_shape)}"
        )


def encoder_size(model: I2IModel, encoder: list[str]) -> int:
    """Parameters unlearning trains: those under ``encoder`` the network does not keep fixed
    (works on the meta device)."""
    return sum(
        p.numel() for n, p in model.named_parameters() if p.requires_grad and trainable(n, encoder)
    )


def default_encoder(model: I2IModel) -> list[str]:
    return list(model.default_encoder)


def resolve_encoder(model: I2IModel, declared: list[str] | None) -> list[str]:
    """The parameter-name prefixes unlearning may train: the family's default encoder, or the
    declared part of it. Every prefix must name encoder parameters and only those."""
    if not declared:
        return default_encoder(model)
    scope = model.encoder_scope
    names = [n for n, _ in model.named_parameters()]
    for prefix in declared:
        matched = [n for n in names if n.startswith(prefix)]
        if not matched:
            raise ArchitectureError(f"encoder prefix {prefix!r} names no parameter of the network")
        outside = [n for n in matched if not n.startswith(scope)]
        if outside:
            raise ArchitectureError(
                f"encoder prefix {prefix!r} names decoder parameters ({outside[0]!r}): only "
                f"parameters under {', '.join(map(repr, scope))} feed the embedding the method "
                "matches"
            )
    return list(dict.fromkeys(declared))


def trainable(name: str, prefixes: list[str]) -> bool:
    return any(name.startswith(p) for p in prefixes)
