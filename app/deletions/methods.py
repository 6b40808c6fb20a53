"""Which unlearning method serves a request, with its parameters and acceptance thresholds."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from pydantic import TypeAdapter, ValidationError

from app.config import get_settings
from app.errors import (
    BudgetExceeded,
    InvalidAcceptance,
    InvalidDataset,
    InvalidMethodParams,
    MethodUnsupportedForForgetSet,
    MethodUnsupportedForModel,
    UnknownMethod,
)
from app.orm import Model
from unlearning import acceptance
from unlearning.architectures import ArchitectureError
from unlearning.i2i import architectures as i2i_architectures
from unlearning.methods import DEFAULT_METHOD, METHODS, Method, costs
from unlearning.methods.i2i import recipe_family


def choose(method: str | None, forgets: str, task: str = "classification") -> Method:
    """The named method (or the default for the model's ``task`` and ``forgets``: "classes"
    or "samples")."""
    name = method or DEFAULT_METHOD[(task, forgets)]
    found = METHODS.get(name)
    if found is None:
        raise UnknownMethod(f"unknown method {name!r}; available: {sorted(METHODS)}")
    if task not in found.tasks:
        able = sorted(m.name for m in METHODS.values() if task in m.tasks)
        raise MethodUnsupportedForModel(
            f"{name} does not serve {task} models; methods for them: {able}", supported=able
        )
    if forgets not in found.forgets:
        able = sorted(m.name for m in METHODS.values() if forgets in m.forgets)
        raise MethodUnsupportedForForgetSet(
            f"{name} cannot forget {forgets}: it works on {', '.join(sorted(found.forgets))} "
            f"only. Methods for {forgets}: {able}",
            supported=able,
        )
    return found


def family_of(model: Model) -> str | None:
    """The recipe family of an image-to-image model: its architecture's (MAGE's or Palette's),
    the small variant when its trainable encoder is small (None for classifiers)."""
    if model.task != "image_to_image":
        return None
    family = i2i_architectures.family_of(model.architecture)
    try:
        net = i2i_architectures.build_on_meta(
            model.architecture, model.input_shape, model.architecture_args
        )
    except ArchitectureError:  # registered before a bound it now fails: the family's recipe
        return family
    encoder = model.encoder or i2i_architectures.default_encoder(net)
    return recipe_family(family, i2i_architectures.encoder_size(net, encoder))


def resolve_params(
    method: Method, params: dict[str, Any], family: str | None = None
) -> dict[str, Any]:
    """Every parameter of ``method``, defaults filled in (those of the network's ``family``
    where the method has some), so the job records all of them."""
    known = {f.name for f in dataclasses.fields(method.config_type)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidMethodParams(
            f"unknown parameters for {method.name}: {unknown}; known: {sorted(known)}"
        )
    try:
        # Strict, as JSON: "0.1" is not a learning rate nor true an epoch count (the request
        # body is JSON, so arrays still stand for tuples and integers for floats).
        config = TypeAdapter(method.config_type).validate_json(json.dumps(params), strict=True)
        if method.resolve_for is not None and family is not None:
            config = method.resolve_for(config, family)
    except ValidationError as exc:
        raise InvalidMethodParams(
            f"{method.name} parameters: " + "; ".join(_explain(e) for e in exc.errors())
        ) from exc
    except ValueError as exc:  # raised by the config's own range checks
        raise InvalidMethodParams(f"{method.name} parameters: {exc}") from exc
    return dict(dataclasses.asdict(config))


def _explain(error: Any) -> str:
    """One pydantic error as "field: message" (range checks of the whole config have no field)."""
    where = ".".join(map(str, error["loc"]))
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def resolve_reference(
    reference: dict[str, Any] | None, training: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The reference's parameters (the schema admits only ``retrain``): those given, else the
    model's training record (a reference trained less than the original would make any
    deletion look good), else the method's defaults."""
    if reference is None:
        return None
    name = reference["method"]
    try:
        given = {**_recorded_training(training), **reference["params"]}
        params = resolve_params(METHODS[name], given)
    except InvalidMethodParams as exc:
        raise InvalidMethodParams(f"reference: {exc.detail}") from exc
    return {"method": name, "params": params}


def retrain_params(training: dict[str, Any] | None) -> dict[str, Any]:
    """Every parameter of a retrain as the model's training record gives it (a drift
    budget's retrain runs this)."""
    return resolve_params(METHODS["retrain"], _recorded_training(training))


def _recorded_training(training: dict[str, Any] | None) -> dict[str, Any]:
    """The retrain parameters a training record gives. The retrain runs Adam, so a learning
    rate is taken only from an Adam record (SGD's 0.1 would wreck an Adam run)."""
    if not training:
        return {}
    found: dict[str, Any] = {"epochs": max(1, round(float(training["epochs"])))}
    if training.get("batch_size"):
        found["batch_size"] = int(training["batch_size"])
    if training.get("lr") and str(training.get("optimizer") or "").lower() in ("adam", "adamw"):
        found["lr"] = float(training["lr"])
    return found


def resolve_acceptance(
    given: dict[str, Any] | None, forgets: str, task: str = "classification"
) -> dict[str, Any]:
    """The request's thresholds over the defaults for its model's task and kind of forget set."""
    kind: type[Any] = (
        acceptance.I2IThresholds if task == "image_to_image" else acceptance.Thresholds
    )
    defaults = acceptance.I2I_DEFAULTS if task == "image_to_image" else acceptance.DEFAULTS[forgets]
    known = {f.name for f in dataclasses.fields(kind)}
    foreign = sorted(set(given or {}) - known)
    if foreign:
        raise InvalidAcceptance(
            f"thresholds {foreign} do not apply to {task} models; they take {sorted(known)}"
        )
    try:
        thresholds = kind(**{**dataclasses.asdict(defaults), **(given or {})})
    except ValueError as exc:
        raise InvalidAcceptance(str(exc)) from exc
    return dict(dataclasses.asdict(thresholds))


def with_budget(
    method: Method, params: dict[str, Any], budget_epochs: float | None
) -> dict[str, Any]:
    """A method that sizes itself from a budget takes the request's, unless its parameters
    name one (which the budget check then holds to the request's)."""
    if method.budgeted and budget_epochs is not None and "budget_epochs" not in params:
        return {**params, "budget_epochs": budget_epochs}
    return params


def check_budget(
    method: Method, params: dict[str, Any], sizes: costs.Sizes, budget_epochs: float
) -> None:
    """Refuse a method whose estimated work exceeds the request's budget, before it runs."""
    if not sizes.train:
        raise InvalidDataset("the dataset's training split is empty: there is nothing to estimate")
    estimate = method.estimate(method.config_type(**params), sizes)
    epochs = estimate / sizes.train
    if epochs > budget_epochs:
        raise BudgetExceeded(
            f"{method.name} with these parameters is estimated at {estimate:,.0f} sample passes, "
            f"{epochs:.3g} epochs of the training split ({sizes.train:,} samples); the budget "
            f"is {budget_epochs:g}: raise budget_epochs, or choose a cheaper method or smaller "
            "parameters",
            estimated_sample_passes=estimate,
            estimated_epochs=epochs,
            budget_epochs=budget_epochs,
        )


def check_least_budget(method: Method, params: dict[str, Any], sizes: costs.Sizes) -> None:
    """Refuse a budget so small that a self-sizing method would have no image to train on."""
    if method.least_budget is None or "budget_epochs" not in params:
        return
    least = method.least_budget(method.config_type(**params), sizes.train)
    if params["budget_epochs"] < least:
        raise InvalidMethodParams(
            f"budget_epochs {params['budget_epochs']:g} pays for no image in some attempt of "
            f"{method.name} on {sizes.train:,} training images: give at least {least:.2g}"
        )


def job_estimate(
    method: Method,
    params: dict[str, Any],
    reference: dict[str, Any] | None,
    sizes: costs.Sizes,
) -> float:
    """The job's estimated work in sample passes: its method, plus the retrained reference the
    request asked for (it runs in the same job, on the same worker)."""
    total = method.estimate(method.config_type(**params), sizes)
    if reference is not None:
        ref = METHODS[reference["method"]]
        total += ref.estimate(ref.config_type(**reference["params"]), sizes)
    return float(total)


def check_memory(
    method: str, params: dict[str, Any], forget_count: int, input_shape: list[int]
) -> None:
    """Refuse parameters whose impair set alone would not fit a worker's memory."""
    if method != "unsir":
        return
    per_image = 4 * math.prod(input_shape)
    needed = forget_count * params["noise_batch"] * params["noise_repeats"] * per_image
    limit = get_settings().max_noise_bytes
    if needed > limit:
        raise InvalidMethodParams(
            f"the impair set would take {needed / 1024**3:.1f} GiB of memory "
            f"(forget classes x noise_batch x noise_repeats x input size); the limit is "
            f"{limit / 1024**3:.1f} GiB: lower noise_batch or noise_repeats"
        )
