"""Suite-wide rules (SLURM and Fashion-MNIST tests skip without them, but are required in CI) and
what several test modules share: the stub-trainer fixture of the sweep tests and the synthetic data
the trainer tests train on (run and sweep folders for the analysis tests: run_folders.py)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import gat.sample
import gat.train
import sweep_stub
from contract.config import load_config
from gat.data.dataset import LatentDataset
from gat.data.fashion_mnist import DatasetMissingError, resolve_root

SMOKE = Path(__file__).resolve().parent.parent / "gat" / "configs" / "fmnist_smoke.yaml"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("slurm") is None:
        return
    if _slurm_up():
        return
    if os.environ.get("GATSCALE_REQUIRE_SLURM") == "1":
        pytest.fail("SLURM is required here (GATSCALE_REQUIRE_SLURM=1) but `sinfo` does not answer; "
                    "start it with `WITH_DBD=1 bash scripts/slurm_up.sh`")
    pytest.skip("no SLURM cluster on this machine (start one with `WITH_DBD=1 bash scripts/slurm_up.sh`)")


@pytest.fixture
def fashion_mnist_installed() -> None:
    """Skip without Debian's dataset-fashion-mnist, except in CI (`.ci/run` installs it)."""
    try:
        resolve_root(None)
    except DatasetMissingError as err:
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide Fashion-MNIST: {err}")
        pytest.skip(str(err))


@pytest.fixture
def stub_trainer(tmp_path_factory, monkeypatch):
    """Make jobs run the stub (importable through PYTHONPATH, which jobs inherit)."""
    folder = tmp_path_factory.mktemp("stub")
    (folder / "stubtrainer.py").write_text(sweep_stub.STUB)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("GATSCALE_TRAINER", "stubtrainer")
    monkeypatch.setenv("STUB_STEP_S", "0.02")
    return folder


# The trainer on synthetic data (test_train, test_wandb, test_ddp, test_diagnostics).


class SyntheticLatents(LatentDataset):
    """A fixed random latent 'dataset' with real posterior noise (std `noise`)."""

    latent_channels, latent_size, num_classes = 4, 8, 10
    scaling_factor, has_images, fingerprint = 1.0, False, "synthetic"

    def __init__(self, size: int = 64, noise: float = 0.1, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.mean = torch.randn(size, 4, 8, 8, generator=generator).numpy()
        self.std = np.full_like(self.mean, noise)
        self.labels = np.arange(size) % self.num_classes

    def __len__(self) -> int:
        return len(self.mean)

    def _moments(self, indices):
        return self.mean[indices], self.std[indices]

    def _labels(self, indices):
        return self.labels[indices]


class FakeDecoder(torch.nn.Module):
    """Latents [B,4,8,8] -> 'images' [B,3,32,32] in [0,1], no VAE weights needed."""

    def forward(self, latents):
        return torch.sigmoid(latents[:, :3]).repeat_interleave(4, -1).repeat_interleave(4, -2)


def tiny_config(**overrides):
    """The smoke config shrunk to a few steps with frequent log/eval/checkpoint ticks."""
    base = {
        "train.steps": 6, "train.batch": 8, "train.log_every": 2, "train.ckpt_every": 2,
        "train.snapshot_every": 4, "eval.every": 3, "eval.extractor": "none", "eval.probe_batch": 4,
        "logging.wandb": "off", "logging.progress": "lines",
    }
    base.update(overrides)
    return load_config(SMOKE, base)


@pytest.fixture
def synthetic(monkeypatch):
    """Train on SyntheticLatents and decode with FakeDecoder (no Fashion-MNIST, no VAE)."""
    monkeypatch.setattr(gat.train, "load_dataset", lambda cfg: SyntheticLatents())
    monkeypatch.setattr(gat.train, "load_decoder", lambda cfg: FakeDecoder())
    monkeypatch.setattr(gat.sample, "load_decoder", lambda cfg: FakeDecoder())


class Interrupt(BaseException):
    """Stands in for a kill: not an Exception, so the run is left `running`, not `failed`."""
