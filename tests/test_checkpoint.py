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
    # A copy, not a hard link: damage to the rolling files cannot reach it (issue 20, defect 4).
    assert (directory / "step-0000002.pt").stat().st_ino != (directory / "latest.pt").stat().st_ino
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
    with pytest.warns(UserWarning, match="missing keys"), pytest.raises(checkpoint.NoVerifiedCheckpoint, match="latest.pt"):
        checkpoint.load_latest(tmp_path)


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


def _big_state(step: int) -> dict:
    """A state whose tensors fill most of the file, so bytes damaged mid-file hit tensor data."""
    generator = torch.Generator().manual_seed(step)
    weights = {"w": torch.randn(64, 1024, generator=generator), "b": torch.randn(1024, generator=generator)}
    return {**_state(step), "G": weights, "G_ema": {k: v.clone() for k, v in weights.items()}}


@pytest.mark.parametrize("damage", ["garbage", "zeros"])
def test_bytes_damaged_in_place_are_detected_and_skipped(tmp_path, damage):
    directory = tmp_path / "checkpoints"
    checkpoint.save(directory, _big_state(1))
    checkpoint.save(directory, _big_state(2))
    latest = directory / "latest.pt"
    data = bytearray(latest.read_bytes())
    # Inside a tensor's bytes (zip headers are checked by torch itself; tensor data is not).
    start = bytes(data).find(_big_state(2)["G"]["w"].numpy().tobytes()[:256]) + 1024
    assert start > 1024
    patch = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes() if damage == "garbage" else bytes(4096)
    data[start : start + 4096] = patch
    latest.write_bytes(bytes(data))
    # The damage still unpickles (that is the danger) ...
    assert torch.load(latest, weights_only=False)["step"] == 2
    # ... but the content hash catches it, and the previous checkpoint is used instead.
    with pytest.warns(UserWarning, match=r"latest\.pt does not match its content hash") as caught:
        state = checkpoint.load_latest(directory)
    assert state["step"] == 1 and torch.equal(state["G"]["w"], _big_state(1)["G"]["w"])
    assert any("resuming from" in str(w.message) and "previous.pt" in str(w.message) for w in caught)


def test_snapshots_are_the_last_fallback_and_verified_too(tmp_path):
    directory = tmp_path / "checkpoints"
    checkpoint.save(directory, _big_state(4), snapshot=True)
    checkpoint.save(directory, _big_state(5))
    checkpoint.save(directory, _big_state(6))
    for name, step in (("latest.pt", 6), ("previous.pt", 5)):
        path = directory / name
        data = bytearray(path.read_bytes())
        start = bytes(data).find(_big_state(step)["G"]["w"].numpy().tobytes()[:256]) + 64
        assert start > 64
        data[start : start + 64] = bytes(64)
        path.write_bytes(bytes(data))
    with pytest.warns(UserWarning):
        assert checkpoint.load_latest(directory)["step"] == 4
    with pytest.raises(checkpoint.CorruptCheckpoint):
        checkpoint._read(directory / "previous.pt")


def test_digest_covers_every_value_and_legacy_files_load_with_a_warning(tmp_path):
    base = _state(1)
    assert checkpoint.content_digest(base) == checkpoint.content_digest(_state(1) | {"rng": base["rng"]})
    changed = {**base, "opt_g": {"lr": 1e-4}}
    assert checkpoint.content_digest(changed) != checkpoint.content_digest({**base, "opt_g": {"lr": 2e-4}})
    torch.save(base, tmp_path / "latest.pt")  # as written before checkpoints carried a hash
    with pytest.warns(UserWarning, match="no content hash"):
        assert checkpoint.load_latest(tmp_path)["step"] == 1


def test_failed_write_leaves_no_tmp_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    directory = tmp_path / "checkpoints"
    checkpoint.save(directory, _state(1))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        checkpoint.save(directory, _state(2))
    assert sorted(p.name for p in directory.iterdir()) == ["latest.pt"]
    monkeypatch.undo()
    assert checkpoint.load_latest(directory)["step"] == 1


class _Planted:
    """Unpickling this creates a marker file: what a hostile checkpoint could do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_checkpoint_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    directory = tmp_path / "checkpoints"
    torch.save({**_state(1), "G": _Planted(marker)}, directory.mkdir() or directory / "latest.pt")
    with pytest.warns(UserWarning, match="unreadable"), pytest.raises(checkpoint.NoVerifiedCheckpoint, match="latest.pt"):
        checkpoint.load_latest(directory)
    assert not marker.exists()
