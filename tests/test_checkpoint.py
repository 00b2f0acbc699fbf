"""Checkpoint files: atomic rotation, snapshots, fallback on corruption, RNG round trip."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from gat import checkpoint


def _state(step: int) -> dict:
    return {
        "step": step, "G": {"w": torch.full((3,), float(step))}, "D": {}, "G_ema": {},
        "opt_g": {}, "opt_d": {}, "rng": checkpoint.rng_state(),
    }


def test_save_rotates_latest_to_previous_and_snapshots(tmp_path):
    directory = tmp_path / "checkpoints"
    checkpoint.save(directory, _state(1))
    checkpoint.save(directory, _state(2), snapshot=True)
    assert torch.load(directory / "latest.pt", weights_only=False)["step"] == 2
    assert torch.load(directory / "previous.pt", weights_only=False)["step"] == 1
    assert torch.load(directory / "step-0000002.pt", weights_only=False)["step"] == 2
    checkpoint.save(directory, _state(3))
    # The snapshot is its own file: rotating latest away does not touch it.
    assert torch.load(directory / "step-0000002.pt", weights_only=False)["step"] == 2
    assert not list(directory.glob("*.tmp"))


def test_load_latest_falls_back_to_previous_when_latest_is_truncated(tmp_path):
    directory = tmp_path / "checkpoints"
    checkpoint.save(directory, _state(1))
    checkpoint.save(directory, _state(2))
    latest = directory / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable"):
        state = checkpoint.load_latest(directory)
    assert state["step"] == 1


def test_load_latest_falls_back_when_latest_is_missing(tmp_path):
    directory = tmp_path / "checkpoints"
    checkpoint.save(directory, _state(1))
    checkpoint.save(directory, _state(2))
    (directory / "latest.pt").unlink()  # a kill between the two renames of a save
    with pytest.warns(UserWarning, match="previous"):
        assert checkpoint.load_latest(directory)["step"] == 1


def test_load_latest_rejects_foreign_files_and_empty_folders(tmp_path):
    assert checkpoint.load_latest(tmp_path) is None
    torch.save({"not": "ours"}, tmp_path / "latest.pt")
    with pytest.warns(UserWarning, match="missing keys"):
        assert checkpoint.load_latest(tmp_path) is None


def test_rng_state_round_trip():
    state = checkpoint.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    checkpoint.set_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_load_for_inference_reads_a_snapshot(tmp_path):
    checkpoint.save(tmp_path / "checkpoints", _state(5), snapshot=True)
    checkpoint.save(tmp_path / "checkpoints", _state(6))
    assert checkpoint.load_for_inference(tmp_path, step=5)["step"] == 5
    assert checkpoint.load_for_inference(tmp_path)["step"] == 6
