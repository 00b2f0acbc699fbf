"""Suite-wide rules (SLURM and Fashion-MNIST tests skip without them, but are required in CI) and
the stub-trainer fixture the sweep tests share."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import sweep_stub
from gat.data.fashion_mnist import DatasetMissingError, resolve_root

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
