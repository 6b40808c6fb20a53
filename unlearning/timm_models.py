"""timm classifiers, named ``timm:<model_name>``: built untrained by ``timm.create_model`` with
the registration's class count and channels, and a short list of bounded arguments.

Nothing is downloaded or read from disk: ``pretrained`` is always False and every argument that
would fetch or load weights (``pretrained_cfg``, ``checkpoint_path``, ...) is refused; the
weights come as an uploaded version, as for every other architecture. Only exact names of
``timm.list_models()`` are accepted (no hub names such as ``hf-hub:...``, no pretrained tags
such as ``.a1_in1k``). timm is imported when a timm name is first used: it takes seconds.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from torch import nn

from unlearning.architectures import MAX_SIDE, ArchitectureError, Arg, check_args

PREFIX = "timm:"
_RATE = Arg(float, 0, 1)
# The keyword arguments of timm's classifiers that a JSON body can sensibly set, by name across
# every model (a model refuses those it does not take): regularisation rates, the image size and
# patch size of the networks built for one size (vision transformers and their kin), and the
# pooling before the head.
TIMM_ARGS: dict[str, Arg] = {
    "drop_rate": _RATE,
    "drop_path_rate": _RATE,
    "proj_drop_rate": _RATE,
    "attn_drop_rate": _RATE,
    "img_size": Arg(int, 1, MAX_SIDE),
    "patch_size": Arg(int, 1, MAX_SIDE),
    "global_pool": Arg(str, choices=("avg", "max", "avgmax", "catavgmax", "token", "map")),
}
# Arguments refused with their own reason: what fetches or loads weights, what changes the
# network's output from logits, and what the registration itself decides.
_NOTHING_FETCHED = (
    "nothing is downloaded or read from disk here: the network is built untrained and its "
    "weights are uploaded as a model version"
)
_NOT_LOGITS = "a registered classifier outputs one logit per class"
REFUSED: dict[str, str] = {
    "pretrained": _NOTHING_FETCHED,
    "pretrained_cfg": _NOTHING_FETCHED,
    "pretrained_cfg_overlay": _NOTHING_FETCHED,
    "pretrained_strict": _NOTHING_FETCHED,
    "checkpoint_path": _NOTHING_FETCHED,
    "cache_dir": _NOTHING_FETCHED,
    "features_only": _NOT_LOGITS,
    "out_indices": _NOT_LOGITS,
    "feature_cls": _NOT_LOGITS,
    "num_classes": "num_classes comes from the model's class names; do not pass it",
    "in_chans": "in_chans comes from the model's input_shape (its first entry); do not pass it",
}


def is_timm(name: str) -> bool:
    return name.startswith(PREFIX)


@lru_cache(maxsize=1)
def model_names() -> frozenset[str]:
    """Every model name of the installed timm (``timm.list_models()``)."""
    import timm

    return frozenset(timm.list_models())


@lru_cache(maxsize=1)
def version() -> str:
    import timm

    return str(timm.__version__)


def summary() -> dict[str, Any]:
    """What ``GET /v1/architectures`` says of timm: the prefix, how many names, where they are
    listed, and the arguments a registration may pass."""
    return {
        "prefix": PREFIX,
        "version": version(),
        "count": len(model_names()),
        "names": "timm.list_models(); register as timm:<model_name>, e.g. timm:resnet18",
        "args": sorted(TIMM_ARGS),
    }


def model_name(name: str) -> str:
    """The timm model name of ``timm:<model_name>``, refused unless timm lists it."""
    model = name[len(PREFIX) :]
    if model in model_names():
        return model
    close = difflib.get_close_matches(model, sorted(model_names()), n=3, cutoff=0.75)
    hint = f"; did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
    if "." in model and model.split(".", 1)[0] in model_names():
        hint = f"; drop the pretrained tag: {PREFIX}{model.split('.', 1)[0]}"
    raise ArchitectureError(
        f"unknown timm model {model!r}: the names are those of timm.list_models() "
        f"(timm {version()}, {len(model_names())} models), without a pretrained tag, "
        f"registered as {PREFIX}<model_name>{hint}"
    )


def check_timm_args(name: str, args: Mapping[str, Any]) -> None:
    for key in args:
        if key in REFUSED:
            raise ArchitectureError(f"argument {key!r} of {name!r} is not accepted: {REFUSED[key]}")
    check_args(name, args, TIMM_ARGS)


def build(name: str, num_classes: int, in_chans: int, args: Mapping[str, Any]) -> nn.Module:
    """Build ``timm:<model_name>`` untrained (raises ArchitectureError with the reason)."""
    model = model_name(name)
    check_timm_args(name, args)
    import timm

    try:
        net = timm.create_model(
            model, pretrained=False, num_classes=num_classes, in_chans=in_chans, **args
        )
    except Exception as exc:  # arbitrary constructors fail in arbitrary ways on bad arguments
        shown = dict(args)
        raise ArchitectureError(f"cannot build {name!r} with arguments {shown}: {exc}") from exc
    return net
