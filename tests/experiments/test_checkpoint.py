"""Checkpoints: round trip, atomic writes, clear errors on corrupted or foreign files."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, to_numpy


def test_round_trip_tensors_numpy_and_rng(tmp_path: Path) -> None:
    net = torch.nn.Linear(3, 2)
    rng = np.random.default_rng(5)
    entries = {
        "policy": net.state_dict(),
        "state": {"steps": 7, "obs": np.arange(6.0).reshape(2, 3), "rng": rng.bit_generator.state},
    }
    path = save_checkpoint(tmp_path / "c.zip", entries, {"steps": 7})
    loaded, meta = load_checkpoint(path)
    assert meta["steps"] == 7
    torch.testing.assert_close(loaded["policy"]["weight"], net.weight.detach())
    state = to_numpy(loaded["state"])
    np.testing.assert_array_equal(state["obs"], np.arange(6.0).reshape(2, 3))
    other = np.random.default_rng(0)
    other.bit_generator.state = state["rng"]
    assert other.random() == rng.random()


def test_no_temp_files_left(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c.zip", {"a": {"x": torch.ones(2)}}, {})
    save_checkpoint(tmp_path / "c.zip", {"a": {"x": torch.zeros(2)}}, {})
    assert [p.name for p in tmp_path.iterdir()] == ["c.zip"]
    assert load_checkpoint(tmp_path / "c.zip")[0]["a"]["x"].sum() == 0


def test_corrupted_file_is_clear(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.zip", {"a": {"x": torch.ones(2)}}, {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted checkpoint"):
        load_checkpoint(path)


def test_foreign_zip_and_missing_file(tmp_path: Path) -> None:
    foreign = tmp_path / "sb3.zip"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("data", "{}")
    with pytest.raises(CheckpointError, match="not an mlkv-trader checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.zip")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("meta.json", '{"format": "mlkv-trader-checkpoint", "version": 1}')
        zf.writestr("policy.pt", pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_artifacts_have_normal_permissions(tmp_path: Path) -> None:
    import os

    from experiments.checkpoint import write_atomic

    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.json", b"{}")
        save_checkpoint(tmp_path / "c.zip", {"x": {"w": torch.zeros(2)}}, {})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "c.zip").stat().st_mode & 0o777 == 0o644
