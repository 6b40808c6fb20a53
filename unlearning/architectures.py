"""Classifier architectures by name: every torchvision classifier plus small built-in networks."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import nn


class ArchitectureError(ValueError):
    """The architecture name or its arguments are unusable."""


@dataclass(frozen=True)
class Arg:
    """A constructor argument a registration may pass: its JSON type (int, float or bool) and
    inclusive range, or, with ``items``, a list of (least, most) such values; or a string among
    ``choices``. Bounding every argument before anything is built keeps a registration's trial
    build, on the meta device, to a fraction of a second; the parameter count (check_size) bounds
    the rest."""

    kind: type
    low: float = 0
    high: float = 0
    items: tuple[int, int] | None = None
    nullable: bool = False
    choices: tuple[str, ...] = ()

    def problem(self, value: object) -> str | None:
        """Why ``value`` is refused, or None."""
        if value is None and self.nullable:
            return None
        if self.items is None:
            return None if self._fits(value) else f"must be {self._describe()}"
        least, most = self.items
        if not isinstance(value, list | tuple) or not least <= len(value) <= most:
            return f"must be a list of at least {least} and at most {most} {self._describe(True)}"
        bad = next((v for v in value if not self._fits(v)), None)
        return None if bad is None else f"lists {_shown(bad)}; each item must be {self._describe()}"

    def _fits(self, value: object) -> bool:
        if self.kind is str:
            return isinstance(value, str) and value in self.choices
        if self.kind is bool:
            return isinstance(value, bool)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return self.low <= value <= self.high  # exact for ints of any size

    def _describe(self, plural: bool = False) -> str:
        if self.kind is str:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind is bool:
            return "booleans" if plural else "true or false"
        noun = {int: "integer", float: "number"}[self.kind]
        what = f"{noun}s, each" if plural else f"an {noun}" if noun == "integer" else f"a {noun}"
        text = f"{what} at least {_number(self.low)} and at most {_number(self.high)}"
        return f"null or {text}" if self.nullable and not plural else text


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _shown(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return "a number too large to print"
    return text if len(text) <= 80 else text[:77] + "..."


def check_args(name: str, args: Mapping[str, Any], accepted: Mapping[str, Arg]) -> None:
    """Refuse (ArchitectureError, naming it) the first argument not in ``accepted`` or out of its
    range."""
    for key, value in args.items():
        spec = accepted.get(key)
        if spec is None:
            raise ArchitectureError(
                f"cannot build {name!r}: argument {key!r} is not accepted "
                f"(accepted: {', '.join(sorted(accepted)) or 'none'})"
            )
        problem = spec.problem(value)
        if problem is not None:
            shown = _shown(value)
            raise ArchitectureError(f"argument {key!r} of {name!r} is {shown}: it {problem}")


def parameter_count(model: nn.Module) -> int:
    """Elements of every parameter and buffer (the state dict), counted without allocating."""
    return sum(t.numel() for t in model.state_dict().values())


def check_size(model: nn.Module, max_parameters: int, label: str = "the network") -> None:
    """Refuse a network (built on meta) with more than ``max_parameters`` parameters and
    buffers, before anything allocates them."""
    count = parameter_count(model)
    if count > max_parameters:
        raise ArchitectureError(
            f"{label} has {count:,} parameters and buffers, more than the {max_parameters:,} "
            "this server accepts: choose smaller arguments"
        )


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinyCNN(nn.Module):
    """Two conv blocks and a linear head; for 8x8 to 32x32 inputs."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(in_channels, width),
            _conv_bn(width, width * 2, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(width * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


MAX_STAGES, MAX_BLOCKS, MAX_WIDTH, MAX_CHANNELS = 8, 64, 1024, 4096
# Bounds of the other built-ins' (and the image-to-image networks') arguments.
MAX_LAYERS, MAX_HEADS, MAX_DIM, MAX_HIDDEN, MAX_SIDE = 48, 64, 4096, 16384, 4096
MAX_FEATURES = 3 * MAX_SIDE * MAX_SIDE  # a flattened [3, 4096, 4096] input


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet (3x3 stem, no max-pool) sized for 8x8 to 32x32 inputs.

    ``blocks=(2, 2, 2, 2)`` with ``width=64`` is the usual ResNet-18 for small images.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: int = 16,
        blocks: tuple[int, ...] | list[int] = (1, 1, 1),
    ) -> None:
        super().__init__()
        if not blocks or any(int(b) < 1 for b in blocks):
            raise ArchitectureError("blocks must be a non-empty list of positive integers")
        # Bounds that keep a registration's trial build (and any worker's) to seconds.
        if len(blocks) > MAX_STAGES or sum(int(b) for b in blocks) > MAX_BLOCKS:
            raise ArchitectureError(
                f"blocks may list at most {MAX_STAGES} stages of {MAX_BLOCKS} blocks in all"
            )
        if not 1 <= width <= MAX_WIDTH or width * 2 ** (len(blocks) - 1) > MAX_CHANNELS:
            raise ArchitectureError(
                f"width must be between 1 and {MAX_WIDTH}, and the last stage's channels "
                f"(width x 2^(stages-1)) at most {MAX_CHANNELS}"
            )
        self.stem = _conv_bn(in_channels, width)
        stages: list[nn.Module] = []
        c_in = width
        for i, n in enumerate(blocks):
            c_out = width * (2**i)
            for j in range(int(n)):
                stages.append(_BasicBlock(c_in, c_out, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))))


class MLP(nn.Module):
    """Flatten, one hidden layer, linear head."""

    def __init__(self, num_classes: int, in_features: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def small_vit(
    num_classes: int,
    image_size: int = 32,
    patch_size: int = 4,
    num_layers: int = 4,
    num_heads: int = 4,
    hidden_dim: int = 192,
    mlp_dim: int = 384,
) -> nn.Module:
    """torchvision's VisionTransformer at small-image sizes: its named models fix a patch of
    14-32 pixels, which leaves a 32x32 image one or four tokens."""
    return torchvision.models.VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
        num_classes=num_classes,
    )


BUILTIN: dict[str, Callable[..., nn.Module]] = {
    "tiny_cnn": TinyCNN,
    "small_resnet": SmallResNet,
    "small_vit": small_vit,
    "mlp": MLP,
}
_CHANNELS = Arg(int, 1, MAX_CHANNELS)
BUILTIN_ARGS: dict[str, dict[str, Arg]] = {
    "tiny_cnn": {"in_channels": _CHANNELS, "width": Arg(int, 1, MAX_WIDTH)},
    "small_resnet": {
        "in_channels": _CHANNELS,
        "width": Arg(int, 1, MAX_WIDTH),
        "blocks": Arg(int, 1, MAX_BLOCKS, items=(1, MAX_STAGES)),
    },
    "small_vit": {
        "image_size": Arg(int, 1, MAX_SIDE),
        "patch_size": Arg(int, 1, MAX_SIDE),
        "num_layers": Arg(int, 1, MAX_LAYERS),
        "num_heads": Arg(int, 1, MAX_HEADS),
        "hidden_dim": Arg(int, 1, MAX_DIM),
        "mlp_dim": Arg(int, 1, MAX_HIDDEN),
    },
    "mlp": {"in_features": Arg(int, 1, MAX_FEATURES), "hidden": Arg(int, 1, MAX_HIDDEN)},
}
# torchvision's builders fix each network's structure (depths, stage widths) and pass the rest of
# their keyword arguments to its class: these are the ones a JSON body can sensibly set, by name
# across every classifier (a builder refuses those its network does not take). Structure lists
# such as mobilenet_v2's inverted_residual_setting, and layer classes, are not accepted.
_RATE = Arg(float, 0, 1)
_FLAG = Arg(bool)
TORCHVISION_ARGS: dict[str, Arg] = {
    "dropout": _RATE,
    "attention_dropout": _RATE,
    "dropout_aux": _RATE,
    "mlp_dropout": _RATE,
    "drop_rate": _RATE,
    "stochastic_depth_prob": _RATE,
    "layer_scale": _RATE,
    "aux_logits": _FLAG,
    "transform_input": _FLAG,
    "init_weights": _FLAG,
    "zero_init_residual": _FLAG,
    "memory_efficient": _FLAG,
    "reduced_tail": _FLAG,
    "dilated": _FLAG,
    "progress": _FLAG,
    "replace_stride_with_dilation": Arg(bool, items=(3, 3)),
    "width_mult": Arg(float, 0.01, 4),
    "round_nearest": Arg(int, 1, 64),
    "mlp_ratio": Arg(float, 0.01, 16),
    "expansion_ratio": Arg(float, 0.01, 16),
    "squeeze_ratio": Arg(float, 0.01, 1),
    "bn_size": Arg(int, 1, 16),
    "groups": Arg(int, 1, 256),
    "width_per_group": Arg(int, 1, 1024),
    "stem_width": Arg(int, 1, 1024),
    "image_size": Arg(int, 1, MAX_SIDE),
    "input_size": Arg(int, 1, MAX_SIDE, items=(2, 2)),
    "representation_size": Arg(int, 1, MAX_DIM, nullable=True),
}


def torchvision_classifiers() -> list[str]:
    # module= restricts the list to image classifiers (not detection, segmentation, video, ...).
    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_architectures() -> dict[str, list[str]]:
    return {"builtin": sorted(BUILTIN), "torchvision": torchvision_classifiers()}


def build_classifier(
    name: str,
    num_classes: int,
    args: dict[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
) -> nn.Module:
    """Build an untrained classifier; raises ArchitectureError with a readable reason.

    ``input_shape`` ([C, H, W], the registration's) gives a timm network its input channels
    (``in_chans``; 3 when it is not given); the other architectures take theirs from ``args``.
    """
    from unlearning import timm_models  # it builds on Arg and check_args, above

    args = dict(args or {})
    if timm_models.is_timm(name):
        in_chans = int(input_shape[0]) if input_shape is not None else 3
        return timm_models.build(name, num_classes, in_chans, args)
    if "num_classes" in args:
        raise ArchitectureError("num_classes comes from the model's class names; do not pass it")
    if "weights" in args and args.pop("weights") is not None:
        raise ArchitectureError("pretrained weights cannot be downloaded here; upload a checkpoint")
    if name in BUILTIN:
        factory: Callable[..., nn.Module] = BUILTIN[name]
        check_args(name, args, BUILTIN_ARGS[name])
    elif name in torchvision_classifiers():
        factory = lambda **kw: torchvision.models.get_model(name, weights=None, **kw)  # noqa: E731
        check_args(name, args, TORCHVISION_ARGS)
    else:
        raise ArchitectureError(
            f"unknown architecture {name!r}: GET /v1/architectures lists the built-in and "
            f"torchvision names; timm models are named {timm_models.PREFIX}<model_name>"
        )
    try:
        return factory(num_classes=num_classes, **args)
    except ArchitectureError:
        raise
    except Exception as exc:  # arbitrary constructors fail in arbitrary ways on bad arguments
        raise ArchitectureError(f"cannot build {name!r} with arguments {args}: {exc}") from exc


def check_input_shape(model: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Run a forward pass on the meta device to prove the input shape fits the network."""
    try:
        with torch.no_grad():
            out = model.eval()(torch.empty((2, *input_shape), device="meta"))
    except Exception as exc:  # any failure in an arbitrary network's forward is a shape problem
        hint = ""
        if hasattr(model, "pretrained_cfg"):  # a timm network: those of one image size say so
            hint = " (timm networks built for one image size take the argument img_size)"
        raise ArchitectureError(
            f"input shape {list(input_shape)} does not fit: {exc}{hint}"
        ) from exc
    if tuple(out.shape) != (2, num_classes):
        raise ArchitectureError(
            f"the network outputs shape {list(out.shape)[1:]}, expected [{num_classes}] logits"
        )


def build_on_meta(
    name: str,
    num_classes: int,
    args: dict[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
) -> nn.Module:
    """Build without allocating weights: cheap enough for request-time validation."""
    with torch.device("meta"):
        return build_classifier(name, num_classes, args, input_shape)
