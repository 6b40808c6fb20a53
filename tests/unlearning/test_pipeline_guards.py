"""Guards of the worker pipeline that need no database: diverged weights, JSON-safe metrics."""

from __future__ import annotations

import math

import pytest
import torch

from app.signing import json_value
from tests.helpers import trained_model
from unlearning.jobs.common import UnlearningDiverged, refuse_diverged


def test_diverged_weights_are_refused():
    model = trained_model()
    refuse_diverged(model)
    with torch.no_grad():
        model.fc.bias[0] = math.nan
    with pytest.raises(UnlearningDiverged, match=r"fc\.bias"):
        refuse_diverged(model)


def test_metrics_become_json_the_database_accepts():
    assert json_value({"a": [1.0, math.inf], "b": {"c": math.nan}, "d": "x"}) == {
        "a": [1.0, None],
        "b": {"c": None},
        "d": "x",
    }
