"""Safe checkpoint reading: data is parsed, code is refused."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    largest_storage,
    raw_zip,
    safetensors_bytes,
    torch_bytes,
    torch_members,
    trained_state,
    zeros_member,
)
from unlearning import architectures, archives, checkpoints


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def write(tmp_path: Path, name: str, payload: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(payload)
    return path


def net() -> torch.nn.Module:
    return architectures.build_on_meta("tiny_cnn", 10, {"in_channels": 1})


def test_reads_safetensors_and_torch_state_dicts(tmp_path):
    payloads = {"a.safetensors": safetensors_bytes(), "b.pt": torch_bytes(trained_state())}
    for name, payload in payloads.items():
        state = checkpoints.read_state_dict(write(tmp_path, name, payload))
        assert checkpoints.fit_problems(net(), state) == []
        assert torch.equal(state["fc.weight"], trained_state()["fc.weight"])


def test_a_safetensors_header_whose_length_starts_like_a_pickle_is_still_safetensors(tmp_path):
    """The header length's low byte is 0x80 (a pickle's first byte) for one length in 32: such
    a file, a stored checkpoint downloaded and uploaded again say, is read as safetensors."""
    import safetensors.torch

    tensor = torch.arange(4, dtype=torch.float32)
    for n in range(1, 300):
        payload = safetensors.torch.save({"w" * n: tensor})
        if payload[0] == 0x80:
            break
    assert payload[0] == 0x80
    assert checkpoints.sniff_format(payload[:16]) == "safetensors"
    state = checkpoints.read_state_dict(write(tmp_path, "x.safetensors", payload))
    assert torch.equal(state["w" * n], tensor)
    for pickled in (pickle.dumps({}, protocol=2), torch_bytes({"w": tensor})):
        assert checkpoints.sniff_format(pickled[:16]) == "torch"


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_that_runs_code_is_refused_unrun(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"fc.weight": RunsCode(marker)}, protocol=protocol)
    with pytest.raises(checkpoints.CheckpointError) as err:
        checkpoints.read_state_dict(write(tmp_path, "evil.pt", payload))
    assert err.value.code == "checkpoint_unsafe"
    assert not marker.exists()


def test_a_torch_zip_that_runs_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "pwned"
    payload = torch_bytes({"fc.weight": RunsCode(marker)})
    with pytest.raises(checkpoints.CheckpointError) as err:
        checkpoints.read_state_dict(write(tmp_path, "evil.pt", payload))
    assert err.value.code == "checkpoint_unsafe"
    assert not marker.exists()


def test_a_bad_safetensors_header_is_unreadable(tmp_path):
    payload = (40).to_bytes(8, "little") + b'{"x": {"dtype": "F32", "shape": [9]'
    with pytest.raises(checkpoints.CheckpointError) as err:
        checkpoints.read_state_dict(write(tmp_path, "bad.safetensors", payload))
    assert err.value.code == "checkpoint_unreadable"


def test_random_bytes_are_unreadable(tmp_path):
    with pytest.raises(checkpoints.CheckpointError) as err:
        checkpoints.read_state_dict(write(tmp_path, "x.bin", b"hello world, not a model"))
    assert err.value.code == "checkpoint_unreadable"


def test_a_torch_file_that_is_not_a_state_dict_is_refused(tmp_path):
    with pytest.raises(checkpoints.CheckpointError) as err:
        checkpoints.read_state_dict(write(tmp_path, "list.pt", torch_bytes([1, 2, 3])))
    assert err.value.code == "checkpoint_not_state_dict"


def test_fit_problems_name_missing_unexpected_wrong_shape_and_nan():
    state = dict(trained_state())
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["fc.weight"] = torch.zeros(3, 64)
    state["features.0.0.weight"] = torch.full_like(state["features.0.0.weight"], float("nan"))
    problems = checkpoints.fit_problems(net(), state)
    assert "missing tensor 'fc.bias'" in problems
    assert "unexpected tensor 'extra.weight'" in problems
    assert any("'fc.weight' has shape [3, 64]" in p for p in problems)
    assert any("NaN" in p for p in problems)


def test_canonical_bytes_round_trip():
    state = checkpoints.state_from_bytes(checkpoints.canonical_bytes(trained_state()))
    assert all(torch.equal(v, trained_state()[k]) for k, v in state.items())


# Bounded before torch reads anything: a .pt archive by its inflate limits and, like any upload, by
# what the architecture's parameters can need. torch.load is replaced by a tripwire in the tests
# of refusals, so a refusal is known to come before torch allocates a byte.

LIMITS = archives.InflateLimits(max_bytes=2 * 1024**3, max_ratio=100)


@pytest.fixture
def torch_load_unreached(monkeypatch):
    def tripwire(*args, **kwargs):
        raise AssertionError("torch.load was reached: the archive was not refused first")

    monkeypatch.setattr(torch, "load", tripwire)


def torch_bomb(mib: int, declared: int | None = None) -> bytes:
    """The trained state's .pt archive with its largest storage replaced by ``mib`` MiB of
    deflated zeros, declared truthfully or at ``declared`` bytes."""
    members = torch_members(trained_state())
    i = largest_storage(members)
    members[i] = zeros_member(members[i].name, mib, declared)
    return raw_zip(members)


def test_a_torch_bomb_is_refused_before_torch_reads_it(tmp_path, torch_load_unreached):
    path = write(tmp_path, "bomb.pt", torch_bomb(512))
    assert path.stat().st_size < 600_000  # 512 MiB of zeros
    with pytest.raises(checkpoints.CheckpointError) as err:
        checkpoints.read_state_dict(path, LIMITS, checkpoints.byte_budget(net()))
    assert err.value.code == "upload_inflates_too_far"


def test_a_checkpoint_larger_than_its_architecture_needs_is_refused(tmp_path, torch_load_unreached):
    budget = checkpoints.byte_budget(net())
    assert budget < 65 * 1024**2  # tiny_cnn: 64 MiB of slack and a few hundred kB
    generous = archives.InflateLimits(2 * 1024**3, max_ratio=None)
    path = write(tmp_path, "big.pt", torch_bomb(80))
    with pytest.raises(checkpoints.CheckpointError) as err:
        checkpoints.read_state_dict(path, generous, budget)
    assert err.value.code == "checkpoint_mismatch"
    assert "another network's weights" in err.value.problems[0]
    # The same bound holds for a safetensors file, by its size.
    padded = write(tmp_path, "big.safetensors", safetensors_bytes({"w": torch.zeros(20 * 2**20)}))
    with pytest.raises(checkpoints.CheckpointError) as err:
        checkpoints.read_state_dict(padded, generous, budget)
    assert err.value.code == "checkpoint_mismatch"


def test_a_torch_member_that_inflates_past_its_declared_size_is_refused(
    tmp_path, torch_load_unreached
):
    members = torch_members(trained_state())
    declared = members[largest_storage(members)].size
    path = write(tmp_path, "lying.pt", torch_bomb(64, declared=declared))
    with pytest.raises(checkpoints.CheckpointError) as err:
        checkpoints.read_state_dict(path, LIMITS, checkpoints.byte_budget(net()))
    assert err.value.code == "upload_inflates_too_far"
    assert "inflates past" in str(err.value)


def test_the_inflate_limit_applies_to_stored_archives_too(tmp_path, torch_load_unreached):
    path = write(tmp_path, "w.pt", torch_bytes(trained_state()))
    with pytest.raises(checkpoints.CheckpointError) as err:
        checkpoints.read_state_dict(path, archives.InflateLimits(10_000))
    assert err.value.code == "upload_inflates_too_far"


def test_honest_checkpoints_pass_the_bounds(tmp_path):
    budget = checkpoints.byte_budget(net())
    payloads = {
        "stored.pt": torch_bytes(trained_state()),
        "deflated.pt": raw_zip(torch_members(trained_state(), deflated=True)),
        "wrapped.pt": torch_bytes({"state_dict": trained_state(), "epoch": 3}),
        "float64.safetensors": safetensors_bytes(
            {k: v.double() if v.is_floating_point() else v for k, v in trained_state().items()}
        ),
    }
    for name, payload in payloads.items():
        state = checkpoints.read_state_dict(write(tmp_path, name, payload), LIMITS, budget)
        assert checkpoints.fit_problems(net(), state) == [], name


def test_a_safetensors_header_that_outgrows_its_file_is_refused_unallocated(tmp_path):
    for entry in (
        {"dtype": "F32", "shape": [10**12], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1], "data_offsets": [0, 4 * 10**12]},
    ):
        header = json.dumps({"fc.weight": entry}).encode()
        payload = len(header).to_bytes(8, "little") + header + bytes(4)
        with pytest.raises(checkpoints.CheckpointError) as err:
            checkpoints.read_state_dict(write(tmp_path, "h.safetensors", payload), LIMITS)
        assert err.value.code == "checkpoint_unreadable"
