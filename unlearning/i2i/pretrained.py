"""Image-to-image checkpoints in the format ``transformers`` and ``diffusers`` write with
``save_pretrained``: a ``config.json`` and safetensors weights.

Each family is a subclass of the library's own class, so its state dict has exactly the names
the library saves and loads (an unlearned checkpoint reloads with the library's
``from_pretrained``), with what the method and the evaluation need added on top:

- ``transformers:ViTMAEForPreTraining`` (MAE): the encoder sees the visible patches only, as MAE
  drops masked tokens; its features are the ViT's last hidden state. Trained: ``vit.``.
- ``diffusers:UNet2DModel`` (diffusion, Palette's layout): the encoder is the input convolution,
  the down blocks and the mid block, fed the noised image at a timestep of the model's own noise
  schedule; completions run the few-step DDIM sampler. Trained by default: down and mid blocks.
- ``diffusers:VQModel`` (VQ-GAN): the encoder and the quantiser's input convolution; features are
  the pre-quantisation latents. It reconstructs the whole image, which is what is measured.

Nothing from an upload is executed: the configuration is parsed by the library's config class
(only the network's own fields: keys that choose code, such as attn_implementation, are
refused), the network is built from it, and weights are read as data.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from unlearning.architectures import ArchitectureError
from unlearning.i2i import masks
from unlearning.i2i.architectures import LIBRARY_FAMILIES, Condition, Features, I2IModel

# Structural fields bounded before anything is built, so a trial build on the meta device stays
# short; the parameter count (check_size) bounds the rest.
MAX_LAYERS = 64
MAX_WIDTH = 8192
MAX_BLOCKS = 8
MAX_CODES = 1_000_000
MAX_SAMPLING_STEPS = 1000
DEFAULT_SAMPLING_STEPS = 10
_ARG_KEYS = {"config", "scheduler", "sampling_steps"}


def _bounded(config: Mapping[str, Any], limits: Mapping[str, int], family: str) -> None:
    for key, high in limits.items():
        value = config.get(key)
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= high:
                raise ArchitectureError(
                    f"{family} config field {key!r} is {v!r}: it must be an integer from 1 "
                    f"to {high}"
                )
    for key in ("down_block_types", "up_block_types", "block_out_channels"):
        value = config.get(key)
        if isinstance(value, list | tuple) and len(value) > MAX_BLOCKS:
            raise ArchitectureError(
                f"{family} config field {key!r} has more than {MAX_BLOCKS} items"
            )


def _side(size: Any) -> tuple[int, int] | None:
    """An image size of a config (an integer, or [height, width]), or None if it sets none."""
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        return size, size
    if (
        isinstance(size, list | tuple)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    ):
        return int(size[0]), int(size[1])
    raise ArchitectureError(f"the config's image size {size!r} is not an integer or [h, w]")


class _Noised:
    """Per-image timesteps and noise: the same for student, teacher and forget target."""

    @staticmethod
    def make(n: int, steps: int, shape: tuple[int, ...], gen: torch.Generator) -> Condition:
        return {
            "timesteps": torch.randint(0, steps, (n,), generator=gen),
            "noise": torch.randn((n, *shape), generator=gen),
        }


def _diffusers_config(cls: type, config: Mapping[str, Any], family: str) -> dict[str, Any]:
    """The constructor arguments the library's config class reads; unknown keys are refused."""
    name = config.get("_class_name")
    if name is not None and name != cls.__name__:
        raise ArchitectureError(f"config.json is for {name!r}, not {cls.__name__!r} ({family})")
    init, unused, _hidden = cls.extract_init_dict(dict(config))  # type: ignore[attr-defined]
    unknown = sorted(k for k in unused if not k.startswith("_"))
    if unknown:
        raise ArchitectureError(
            f"config.json has keys {cls.__name__} does not take: {unknown[:5]} (a config of "
            "another class or library version)"
        )
    return dict(init)


class PretrainedI2I(I2IModel):
    """What every library family adds to the library's class."""

    library: ClassVar[str]
    input_shape: tuple[int, int, int]

    def configure(self, input_shape: tuple[int, int, int], extras: Mapping[str, Any]) -> None:  # noqa: ARG002
        """Called once built: the registered image shape and the family's extra arguments."""
        self.input_shape = input_shape

    def check_input(self, input_shape: tuple[int, int, int]) -> None:
        """Refuse (ArchitectureError) images the configuration cannot take."""

    def file_names(self) -> dict[str, str]:
        """State-dict name -> the name save_pretrained writes (the same, but for transformers)."""
        return {k: k for k in self.state_dict()}

    def to_checkpoint(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        names = self.file_names()
        return {names.get(k, k): t for k, t in state.items()}

    def from_checkpoint(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        modules = {f: k for k, f in self.file_names().items()}
        return {modules.get(k, k): t for k, t in state.items()}


class MAE(PretrainedI2I):
    """``ViTMAEForPreTraining``; its methods come from the library class (see ``build``)."""

    family = "mae"  # token-based: MAGE's recipe
    library = "transformers"
    encoder_scope = ("vit.",)
    default_encoder = ("vit.",)
    config: Any
    vit: Any
    decoder: Any
    patchify: Any
    unpatchify: Any

    def check_input(self, input_shape: tuple[int, int, int]) -> None:
        c, h, w = input_shape
        size, patch = _side(self.config.image_size), int(self.config.patch_size)
        if self.config.num_channels != c or size != (h, w):
            raise ArchitectureError(
                f"the MAE config takes {self.config.num_channels}x{size} images "
                f"(num_channels, image_size), the model's input_shape is {list(input_shape)}"
            )
        if h % patch or w % patch:
            raise ArchitectureError(f"image size {h}x{w} is not a multiple of patch_size {patch}")

    def file_names(self) -> dict[str, str]:
        """transformers 5 renamed ViTMAE's modules (``attention.attention.query`` became
        ``attention.q_proj``) and writes files with the old names: its own reverse mapping says
        which, and it must be a renaming, tensor for tensor."""
        cached: dict[str, str] | None = self.__dict__.get("_file_names")
        if cached is not None:
            return cached
        from transformers.core_model_loading import revert_weight_conversion

        state = self.state_dict()
        module_key = {id(t): k for k, t in state.items()}
        reverted = revert_weight_conversion(self, dict(state))  # type: ignore[arg-type]
        names = {module_key.get(id(t)): f for f, t in reverted.items()}
        if None in names or len(names) != len(state):
            raise ArchitectureError(
                "this transformers version converts ViTMAE weights beyond renaming them"
            )
        self.__dict__["_file_names"] = names
        return names  # type: ignore[return-value]

    def _hidden_patches(self, mask: torch.Tensor) -> torch.Tensor:
        # A patch with any hidden pixel is masked (MAGE widens its token masks the same way).
        return F.max_pool2d(mask, int(self.config.patch_size)).flatten(1)

    def _encode(self, x: torch.Tensor, mask: torch.Tensor) -> Any:
        """Run the ViT on the visible patches. MAE keeps the same number of patches for every
        image of a batch; where images show different numbers, the batch keeps the fewest."""
        hidden = self._hidden_patches(mask)
        count = hidden.shape[1]
        keep = max(1, int((count - hidden.sum(dim=1)).min()))
        # argsort ascending keeps the lowest: visible patches first, in their own order.
        order = torch.arange(count, device=x.device, dtype=x.dtype) / (2 * count)
        noise = hidden + order
        ratio = self.config.mask_ratio
        self.config.mask_ratio = 1.0 - (keep + 0.5) / count
        try:
            return self.vit(pixel_values=x, noise=noise)
        finally:
            self.config.mask_ratio = ratio

    def encode(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        condition: Condition | None = None,  # noqa: ARG002
    ) -> Features:
        return [self._encode(x, mask).last_hidden_state]

    def complete(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        gen: torch.Generator | None = None,  # noqa: ARG002
    ) -> torch.Tensor:
        out = self._encode(x, mask)
        patches = self.decoder(out.last_hidden_state, out.ids_restore).logits
        if self.config.norm_pix_loss:
            # The decoder predicts each patch normalised to its own mean and variance, which a
            # hidden patch does not show: take those of the image's visible patches instead, so
            # nothing hidden reaches the completion.
            patches = self._denormalised(patches, x, mask)
        return self.unpatchify(patches, tuple(x.shape[2:]))

    def _denormalised(
        self, patches: torch.Tensor, x: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        target = self.patchify(x)  # (B, L, p*p*C)
        visible = (1 - self._hidden_patches(mask)).unsqueeze(-1)  # (B, L, 1)
        count = visible.sum(dim=1, keepdim=True).clamp(min=1)
        means = target.mean(dim=-1, keepdim=True)
        variances = target.var(dim=-1, keepdim=True)
        mean = (means * visible).sum(dim=1, keepdim=True) / count
        var = (variances * visible).sum(dim=1, keepdim=True) / count
        return patches * (var + 1.0e-6) ** 0.5 + mean

    def training_mask(
        self, transform: masks.Transform, n: int, h: int, w: int, gen: torch.Generator
    ) -> torch.Tensor:
        """One hidden share per batch (MAE keeps the same number of patches for every image,
        and the teacher encodes the retain and forget halves apart): half of the batches hide
        the registered centre square or border at a jittered size (x0.75 to x1.25), the same
        for every image, the others (all of them for a random transform) random patches at
        MAGE's truncated-normal ratio (mean 0.55, sd 0.25, held to [0.5, 0.9] so some patches
        stay visible)."""
        if float(torch.rand((), generator=gen)) < 0.5 and transform.kind != "random":
            upper = 0.49 if transform.kind == "outpaint" else 0.95
            jitter = 0.75 + 0.5 * float(torch.rand((), generator=gen))
            size = min(upper, max(0.05, transform.size * jitter))
            seed = int(torch.randint(0, 2**31, (), generator=gen))
            return masks.eval_mask(replace(transform, size=size), n, h, w, seed=seed)
        p = int(self.config.patch_size)
        gh, gw = h // p, w // p
        ratio = float((0.55 + 0.25 * torch.randn((), generator=gen)).clamp(0.5, 0.9))
        hidden = max(1, round(ratio * gh * gw))
        ranks = torch.rand(n, gh * gw, generator=gen).argsort(dim=1).argsort(dim=1)
        grid = (ranks < hidden).float().view(n, 1, gh, gw)
        return grid.repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)


class _Diffusion(PretrainedI2I):
    """Shared by diffusion U-Nets: the noise schedule and the condition layout."""

    family = "diffusion"  # Palette's recipe
    library = "diffusers"
    scheduler_config: dict[str, Any]
    sampling_steps: int = DEFAULT_SAMPLING_STEPS
    config: Any

    def configure(self, input_shape: tuple[int, int, int], extras: Mapping[str, Any]) -> None:
        super().configure(input_shape, extras)
        self.scheduler_config = dict(extras.get("scheduler") or {})
        self.sampling_steps = int(extras.get("sampling_steps") or DEFAULT_SAMPLING_STEPS)
        self.evaluation_passes = self.sampling_steps

    def train_scheduler(self) -> Any:
        """The training noise schedule (built once: every batch reads it)."""
        cached = self.__dict__.get("_train_scheduler")
        if cached is None:
            from diffusers import DDPMScheduler

            cached = self.__dict__["_train_scheduler"] = DDPMScheduler.from_config(
                self.scheduler_config
            )
        return cached

    def sampler(self) -> Any:
        from diffusers import DDIMScheduler

        sampler = DDIMScheduler.from_config(self.scheduler_config)
        sampler.set_timesteps(self.sampling_steps)
        return sampler

    @property
    def conditioning(self) -> str:
        """``none`` (the network sees only the noised image; completions keep the known pixels
        at every step), ``image`` ([masked image, noised image], Palette) or ``image_mask``
        ([masked image, mask, noised image])."""
        c = self.input_shape[0]
        return {c: "none", 2 * c: "image", 2 * c + 1: "image_mask"}[int(self.config.in_channels)]


class DiffusionUNet(_Diffusion):
    """``UNet2DModel``; its forward is the library's."""

    conv_in: Any
    time_proj: Any
    time_embedding: Any
    down_blocks: Any
    mid_block: Any

    encoder_scope = ("conv_in.", "down_blocks.", "mid_block.")
    default_encoder = ("down_blocks.", "mid_block.")

    def check_input(self, input_shape: tuple[int, int, int]) -> None:
        c, h, w = input_shape
        cfg = self.config
        if cfg.out_channels != c:
            raise ArchitectureError(
                f"the U-Net predicts {cfg.out_channels} channels (out_channels), the images "
                f"have {c}"
            )
        if cfg.in_channels not in (c, 2 * c, 2 * c + 1):
            raise ArchitectureError(
                f"in_channels {cfg.in_channels} fits no conditioning of {c}-channel images: "
                f"{c} (unconditional), {2 * c} (masked image + noised image) or {2 * c + 1} "
                "(masked image + mask + noised image)"
            )
        if cfg.class_embed_type is not None or cfg.num_class_embeds is not None:
            raise ArchitectureError("class-conditional U-Nets are not supported (no class labels)")
        size = _side(cfg.sample_size)
        if size is not None and size != (h, w):
            raise ArchitectureError(
                f"the U-Net config's sample_size is {size[0]}x{size[1]}, the model's "
                f"input_shape is {list(input_shape)}"
            )
        factor = 2 ** (len(cfg.block_out_channels) - 1)
        if h % factor or w % factor:
            raise ArchitectureError(f"image size {h}x{w} is not a multiple of {factor}")

    def training_condition(self, n: int, gen: torch.Generator) -> Condition:
        steps = int(self.train_scheduler().config.num_train_timesteps)
        return _Noised.make(n, steps, self.input_shape, gen)

    evaluation_condition = training_condition

    def forget_target(
        self, forget: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Palette's forget target: the known pixels as they are, the hidden ones Gaussian
        noise, noised at the same timestep with the same noise as the student's input."""
        return forget * (1 - mask) + noise * mask

    def _network_input(
        self, x: torch.Tensor, mask: torch.Tensor, noisy: torch.Tensor
    ) -> torch.Tensor:
        mode = self.conditioning
        if mode == "none":
            return noisy
        parts = [x * (1 - mask), mask] if mode == "image_mask" else [x * (1 - mask)]
        return torch.cat([*parts, noisy], dim=1)

    def encode(
        self, x: torch.Tensor, mask: torch.Tensor, condition: Condition | None = None
    ) -> Features:
        if condition is None:
            raise ValueError("a diffusion encoder needs timesteps and noise")
        t, eps = condition["timesteps"].to(x.device), condition["noise"].to(x)
        noisy = self.train_scheduler().add_noise(x, eps, t)
        return self._down(self._network_input(x, mask, noisy), t)

    def _down(self, sample: torch.Tensor, timesteps: torch.Tensor) -> Features:
        """The input convolution, down blocks and mid block of ``UNet2DModel.forward``: every
        down-block output (the skip features) and the mid block's."""
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=sample.dtype))
        skip = sample
        sample = self.conv_in(sample)
        features: Features = [sample]
        for block in self.down_blocks:
            if hasattr(block, "skip_conv"):
                sample, res, skip = block(hidden_states=sample, temb=emb, skip_sample=skip)
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            features.extend(res)
        if self.mid_block is not None:
            features.append(self.mid_block(sample, emb))
        return features

    def training_loss(
        self, x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """The denoising loss at a random timestep, on the hidden pixels when the network is
        conditioned on the masked image (Palette), on all of them when it is not."""
        condition = self.training_condition(len(x), gen)
        t, eps = condition["timesteps"].to(x.device), condition["noise"].to(x)
        schedule = self.train_scheduler()
        noisy = schedule.add_noise(x, eps, t)
        predicted = self(self._network_input(x, mask, noisy), t).sample
        kind = schedule.config.prediction_type
        if kind == "epsilon":
            target = eps
        elif kind == "v_prediction":
            target = schedule.get_velocity(x, eps, t)
        else:
            target = x
        region = torch.ones_like(mask) if self.conditioning == "none" else mask
        err = (predicted - target) ** 2 * region
        return err.sum() / (region.sum() * x.shape[1]).clamp(min=1)

    def complete(
        self, x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator | None = None
    ) -> torch.Tensor:
        """DDIM (deterministic, eta 0) from seeded noise; with no conditioning input, the known
        pixels are put back, noised to the step's level, before every step."""
        sampler = self.sampler()
        gen = gen or torch.Generator().manual_seed(0)
        image = torch.randn(x.shape, generator=gen).to(x)
        known_noise = torch.randn(x.shape, generator=gen).to(x)
        for t in sampler.timesteps:
            if self.conditioning == "none":
                known = sampler.add_noise(x, known_noise, t.view(1).to(x.device))
                image = known * (1 - mask) + image * mask
            step = t.to(x.device).expand(len(x))
            predicted = self(self._network_input(x, mask, image), step).sample
            image = sampler.step(predicted, t, image).prev_sample
        return image


class VQGAN(PretrainedI2I):
    """``VQModel``: encoder and quantiser input train, codebook and decoder stay."""

    family = "vq"  # MAGE's recipe
    library = "diffusers"
    encoder_scope = ("encoder.", "quant_conv.")
    default_encoder = ("encoder.", "quant_conv.")
    reconstructs = True
    config: Any
    encoder: Any
    quant_conv: Any
    decode: Any

    def check_input(self, input_shape: tuple[int, int, int]) -> None:
        c, h, w = input_shape
        if self.config.in_channels != c or self.config.out_channels != c:
            raise ArchitectureError(
                f"the VQ model takes {self.config.in_channels} and gives "
                f"{self.config.out_channels} channels, the images have {c}"
            )
        factor = 2 ** (len(self.config.block_out_channels) - 1)
        if h % factor or w % factor:
            raise ArchitectureError(f"image size {h}x{w} is not a multiple of {factor}")

    def encode(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,  # noqa: ARG002
        condition: Condition | None = None,  # noqa: ARG002
    ) -> Features:
        return [self.quant_conv(self.encoder(x))]

    def complete(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        gen: torch.Generator | None = None,  # noqa: ARG002
    ) -> torch.Tensor:
        latents = self.encode(x, mask)[0]
        return self.decode(latents).sample

    def training_loss(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        gen: torch.Generator,  # noqa: ARG002
    ) -> torch.Tensor:
        """Reconstruction error plus the quantiser's commitment and codebook loss."""
        out = self.decode(self.encode(x, mask)[0])
        return F.mse_loss(out.sample, x) + out.commit_loss.mean()


@functools.cache
def _adapter(hooks: type, library_class: type) -> type:
    """The library class with the method's hooks first in its MRO, under the library's name
    (made once per pair: classes are not freed)."""
    return type(library_class.__name__, (hooks, library_class), {})


_MAE_BOOKKEEPING = {"model_type", "architectures", "transformers_version", "dtype", "torch_dtype"}


def _vit_mae(config: Mapping[str, Any]) -> nn.Module:
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    if config.get("model_type", "vit_mae") != "vit_mae":
        raise ArchitectureError(
            f"config.json is a {config.get('model_type')!r} config, not vit_mae"
        )
    if "auto_map" in config:
        raise ArchitectureError("config.json names remote code (auto_map): it is never run here")
    # Only the network's own fields and save_pretrained's bookkeeping: the generic config keys
    # choose code (attn_implementation can name a kernel to download) or size tables
    # (num_labels, id2label) that an MAE never uses.
    fields = {
        name
        for name, p in inspect.signature(ViTMAEConfig.__init__).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(config) - fields - _MAE_BOOKKEEPING)
    if unknown:
        raise ArchitectureError(
            f"config.json has keys ViTMAEConfig does not take for an MAE: {unknown[:5]} (only "
            "the network's own fields and model_type, architectures, transformers_version, "
            "dtype are read)"
        )
    limits = {
        "num_hidden_layers": MAX_LAYERS,
        "decoder_num_hidden_layers": MAX_LAYERS,
        "hidden_size": MAX_WIDTH,
        "decoder_hidden_size": MAX_WIDTH,
        "intermediate_size": 4 * MAX_WIDTH,
        "decoder_intermediate_size": 4 * MAX_WIDTH,
        "num_attention_heads": 256,
        "decoder_num_attention_heads": 256,
        "patch_size": 4096,
        "num_channels": 3,
    }
    _bounded(config, limits, "MAE")
    kwargs = {k: v for k, v in config.items() if k in fields}
    try:
        parsed = ViTMAEConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ArchitectureError(f"invalid ViTMAEConfig: {exc}") from exc
    return _adapter(MAE, ViTMAEForPreTraining)(parsed)


# The structural fields both diffusers classes share (images of at most 3 channels).
_DIFFUSERS_LIMITS = {
    "block_out_channels": MAX_WIDTH,
    "layers_per_block": 16,
    "out_channels": 3,
    "norm_num_groups": MAX_WIDTH,
}


def _unet(config: Mapping[str, Any]) -> nn.Module:
    from diffusers import UNet2DModel

    limits = {**_DIFFUSERS_LIMITS, "in_channels": 7, "num_train_timesteps": 100_000}
    _bounded(config, limits, "UNet2DModel")
    if config.get("time_embedding_type", "positional") != "positional":
        # Fourier embeddings take log(t) and divide the output by t: undefined at t = 0.
        raise ArchitectureError("only positional time embeddings are supported (not fourier)")
    init = _diffusers_config(UNet2DModel, config, "UNet2DModel")
    return _adapter(DiffusionUNet, UNet2DModel)(**init)


def _vq(config: Mapping[str, Any]) -> nn.Module:
    from diffusers import VQModel

    limits = {
        **_DIFFUSERS_LIMITS,
        "in_channels": 3,
        "latent_channels": MAX_WIDTH,
        "vq_embed_dim": MAX_WIDTH,
        "num_vq_embeddings": MAX_CODES,
    }
    _bounded(config, limits, "VQModel")
    init = _diffusers_config(VQModel, config, "VQModel")
    return _adapter(VQGAN, VQModel)(**init)


FAMILIES: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {
    "transformers:ViTMAEForPreTraining": _vit_mae,
    "diffusers:UNet2DModel": _unet,
    "diffusers:VQModel": _vq,
}


def is_pretrained(name: str) -> bool:
    return name in FAMILIES


assert set(FAMILIES) == set(LIBRARY_FAMILIES)


def _check_scheduler(scheduler: Any) -> dict[str, Any]:
    from diffusers import DDIMScheduler, DDPMScheduler

    if scheduler is None:
        return {}
    if not isinstance(scheduler, dict):
        raise ArchitectureError("args.scheduler must be a scheduler_config.json object")
    name = scheduler.get("_class_name")
    if name is not None and name not in ("DDPMScheduler", "DDIMScheduler"):
        raise ArchitectureError(
            f"scheduler {name!r} is not supported: give a DDPMScheduler or DDIMScheduler config "
            "(the training noise schedule)"
        )
    steps = scheduler.get("num_train_timesteps", 1000)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 100_000:
        raise ArchitectureError("scheduler num_train_timesteps must be an integer from 1 to 100000")
    betas = scheduler.get("trained_betas")
    if betas is not None and (not isinstance(betas, list) or len(betas) != steps):
        raise ArchitectureError(
            f"scheduler trained_betas must list num_train_timesteps ({steps}) values"
        )
    for cls in (DDPMScheduler, DDIMScheduler):
        try:
            cls.from_config(scheduler)
        except (TypeError, ValueError, NotImplementedError) as exc:
            raise ArchitectureError(f"invalid scheduler config: {exc}") from exc
    return dict(scheduler)


def build(
    name: str, input_shape: tuple[int, int, int] | list[int], args: Mapping[str, Any]
) -> PretrainedI2I:
    """Build a library network from ``args = {"config": <config.json>, "scheduler":
    <scheduler_config.json> (diffusion U-Nets, optional), "sampling_steps": <DDIM steps>}``."""
    unknown = sorted(set(args) - _ARG_KEYS)
    if unknown:
        raise ArchitectureError(
            f"{name} takes args {sorted(_ARG_KEYS)}: the config.json object under 'config'; "
            f"not {unknown}"
        )
    config = args.get("config")
    if not isinstance(config, dict):
        raise ArchitectureError(
            f"{name} needs args.config: the config.json that save_pretrained wrote"
        )
    extras: dict[str, Any] = {}
    if name == "diffusers:UNet2DModel":
        extras["scheduler"] = _check_scheduler(args.get("scheduler"))
        steps = args.get("sampling_steps", DEFAULT_SAMPLING_STEPS)
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise ArchitectureError("sampling_steps must be an integer")
        most = min(MAX_SAMPLING_STEPS, int(extras["scheduler"].get("num_train_timesteps", 1000)))
        if not 1 <= steps <= most:
            raise ArchitectureError(
                f"sampling_steps must be from 1 to {most} (at most the schedule's timesteps)"
            )
        extras["sampling_steps"] = steps
    elif "scheduler" in args or "sampling_steps" in args:
        raise ArchitectureError(f"{name} takes no scheduler: only diffusion U-Nets sample")
    shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    try:
        net = FAMILIES[name](config)
    except ArchitectureError:
        raise
    except Exception as exc:  # the libraries fail in many ways on bad configurations
        raise ArchitectureError(f"cannot build {name} from this config.json: {exc}") from exc
    assert isinstance(net, PretrainedI2I)
    try:
        net.configure(shape, extras)
        net.check_input(shape)
    except ArchitectureError:
        raise
    except Exception as exc:  # a field the library stored without checking it
        raise ArchitectureError(f"cannot use {name} with this config.json: {exc}") from exc
    return net


def set_mae_position_tables(model: nn.Module) -> None:
    """Fill a freshly built ViTMAE's fixed sin-cos position tables (encoder and decoder), as the
    library's own ``initialize_weights`` computes them. transformers 5 leaves them at zero when
    the network is built from a config: its weight initialisation skips them. A network built
    that way cannot tell its patches apart; checkpoints read from files hold their tables."""
    vit: Any = model.vit
    decoder: Any = model.decoder
    embeddings = vit.embeddings
    embeddings.patch_embeddings.projection.__dict__.pop("_is_hf_initialized", None)
    with torch.no_grad():
        embeddings.initialize_weights()
        decoder.initialize_weights(embeddings.patch_embeddings.num_patches)
