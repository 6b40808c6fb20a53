"""A request on a version that an earlier request produced never retains what that earlier
request forgot: training on it again would bring it back."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sqlalchemy import update

from app.db import session_scope
from app.jobs.outcome import load_context
from app.orm import ModelVersion
from tests.api.conftest import BACKENDS
from tests.api.test_bad_input import submit
from tests.helpers import safetensors_bytes
from unlearning import data
from unlearning.jobs import forget_split

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)


def test_the_retain_set_leaves_out_what_ancestors_forgot(api, registered):
    first = submit(api, registered, key="R1", forget_classes=[3]).json()
    files = {"file": ("m.safetensors", safetensors_bytes(), "application/octet-stream")}
    model_id = registered["model"]["id"]
    child = api.post(
        f"/v1/models/{model_id}/versions",
        files=files,
        data={"parent_version_id": registered["version"]["id"]},
    ).json()
    grandchild = api.post(
        f"/v1/models/{model_id}/versions", files=files, data={"parent_version_id": child["id"]}
    ).json()
    with session_scope() as session:  # as if the first request's job had produced the child
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.id == child["id"])
            .values(produced_by_request_id=first["id"])
        )
    second = submit(api, {**registered, "version": grandchild}, key="R2", forget_classes=[5])
    job = load_context(second.json()["job"]["id"]).job
    assert (job.forget_classes, job.earlier_forget_classes) == ([5], [3])

    train = data.open_split("sklearn_digits", None, "train")
    forget_idx, retain_idx = forget_split(train, job)
    assert set(np.asarray(train.targets)[forget_idx]) == {5}
    assert set(np.asarray(train.targets)[retain_idx]) == set(range(10)) - {3, 5}
    # Samples an earlier request forgot are left out the same way.
    gone = [train.ids[i] for i in retain_idx[:7]]
    job = dataclasses.replace(job, earlier_forget_samples=gone)
    _, fewer = forget_split(train, job)
    assert len(fewer) == len(retain_idx) - 7
    assert not set(gone) & {train.ids[i] for i in fewer}
    # The first request's own job, on the original version, has nothing earlier to leave out.
    assert load_context(first["job"]["id"]).job.earlier_forget_classes == []
