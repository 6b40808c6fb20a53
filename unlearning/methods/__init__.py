"""The unlearning methods, by the name a deletion request uses."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from unlearning.methods import costs
from unlearning.methods.common import MethodResult, UnlearningTask
from unlearning.methods.distill import (
    AutoConfig,
    DistillConfig,
    least_budget,
    run_auto,
    run_distill,
)
from unlearning.methods.i2i import I2IConfig, I2ITask, resolve_for, run_i2i
from unlearning.methods.reference import (
    FinetuneConfig,
    NegGradPlusConfig,
    RandomLabelConfig,
    RetrainConfig,
    finetune,
    neggrad_plus,
    random_label,
    retrain,
)
from unlearning.methods.salun import SalunConfig, salun
from unlearning.methods.ssd import SsdConfig, run_ssd
from unlearning.methods.unsir import UnsirConfig, extra_repair, run_unsir


@dataclass(frozen=True)
class Method:
    name: str
    config_type: type[Any]
    # Classifier methods take an UnlearningTask, image-to-image methods an I2ITask.
    run: Callable[[Any, Any], MethodResult]
    # "classes", "samples" or both: what a request may name for this method.
    forgets: frozenset[str]
    summary: str
    # The progress phases it reports, in order, with their rough share of its time.
    phases: tuple[tuple[str, float], ...]
    # The sample passes it will spend at most, from its config and the data's sizes.
    estimate: Callable[[Any, costs.Sizes], float]
    # One more healing step the acceptance gate may ask for; returns the samples it processed.
    heal: Callable[[UnlearningTask, Any, int], int] | None = None
    heal_limit_param: str | None = None
    # The model tasks it serves.
    tasks: frozenset[str] = frozenset({"classification"})
    # Fills the defaults that depend on the network's family (image-to-image recipes) into a
    # config built from the request's own parameters.
    resolve_for: Callable[[Any, str], Any] | None = None
    # The parameter that sets the batch of each phase whose batch is not ``batch_size``: the one
    # to lower when the phase runs out of memory.
    batch_params: Mapping[str, str] = field(default_factory=dict)
    # Sizes itself from ``budget_epochs``: a request's budget becomes that parameter; below
    # ``least_budget(config, train_size)`` it has nothing to train on.
    budgeted: bool = False
    least_budget: Callable[[Any, int], float] | None = None

    def batch_param(self, phase: str | None) -> str:
        return self.batch_params.get(phase or "", "batch_size")


BOTH = frozenset({"classes", "samples"})
_ALL = (
    Method(
        "auto",
        AutoConfig,
        run_auto,
        frozenset({"classes"}),
        "the default: distillation toward the original renormalised over the remaining "
        "classes, training a growing tail of the network until the acceptance gate passes, "
        "within a budget of 0.1 epoch-equivalents unless the request sets one",
        (("head", 0.2), ("distill", 1.0)),
        estimate=costs.budgeted,
        budgeted=True,
        least_budget=least_budget,
    ),
    Method(
        "distill",
        DistillConfig,
        run_distill,
        frozenset({"classes"}),
        "one distillation toward the original renormalised over the remaining classes, "
        "training only the last tensors, BatchNorm statistics kept",
        (("distill", 1.0),),
        estimate=costs.budgeted,
        budgeted=True,
        least_budget=least_budget,
    ),
    Method(
        "unsir",
        UnsirConfig,
        run_unsir,
        frozenset({"classes"}),
        "error-maximising noise, one impair and one repair epoch; never reads forget data",
        (("noise", 3.0), ("impair", 3.0), ("repair", 1.5)),
        estimate=costs.unsir,
        heal=extra_repair,
        heal_limit_param="max_extra_repair_epochs",
        batch_params={
            "noise": "noise_batch",
            "impair": "impair_batch_size",
            "repair": "repair_batch_size",
            "extra_repair": "repair_batch_size",
        },
    ),
    Method(
        "salun",
        SalunConfig,
        salun,
        BOTH,
        "random labels on the forget set, updating only the most forget-salient weights",
        (("saliency", 0.5), ("relabel", 8.0)),
        estimate=costs.salun,
    ),
    Method(
        "ssd",
        SsdConfig,
        run_ssd,
        BOTH,
        "selective synaptic dampening: no training, weights far more important to the forget "
        "set than to the training data are scaled down; BatchNorm statistics re-estimated",
        (("importance", 1.0), ("batchnorm", 0.3)),
        estimate=costs.ssd,
    ),
    Method(
        "retrain",
        RetrainConfig,
        retrain,
        BOTH,
        "train from scratch on the retain data: the gold standard, and the slowest",
        (("retrain", 10.0),),
        estimate=costs.retain_epochs,
    ),
    Method(
        "finetune",
        FinetuneConfig,
        finetune,
        BOTH,
        "keep training on the retain data only",
        (("finetune", 8.0),),
        estimate=costs.retain_epochs,
    ),
    Method(
        "neggrad_plus",
        NegGradPlusConfig,
        neggrad_plus,
        BOTH,
        "gradient ascent on the forget data, descent on the retain data",
        (("neggrad_plus", 8.0),),
        estimate=costs.neggrad_plus,
        batch_params={"neggrad_plus": "forget_batch_size"},
    ),
    Method(
        "random_label",
        RandomLabelConfig,
        random_label,
        BOTH,
        "train on the forget data relabelled at random, plus the retain data",
        (("random_label", 8.0),),
        estimate=costs.random_label,
    ),
    Method(
        "i2i",
        I2IConfig,
        run_i2i,
        BOTH,
        "image-to-image encoder unlearning: the encoder keeps retain embeddings and maps "
        "forget images to the original encoder's embedding of noise; the decoder is frozen",
        (("i2i", 8.0),),
        estimate=costs.i2i,
        tasks=frozenset({"image_to_image"}),
        resolve_for=resolve_for,
    ),
)
METHODS: dict[str, Method] = {m.name: m for m in _ALL}
# (model task, what the request forgets) -> the method used when the request names none.
DEFAULT_METHOD = {
    ("classification", "classes"): "auto",
    ("classification", "samples"): "salun",
    ("image_to_image", "classes"): "i2i",
    ("image_to_image", "samples"): "i2i",
}

__all__ = ["DEFAULT_METHOD", "METHODS", "I2ITask", "Method", "MethodResult", "UnlearningTask"]
