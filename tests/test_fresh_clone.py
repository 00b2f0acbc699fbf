"""The README's main command on a fresh clone leaves the clone clean: a user's runs, manifests
and analyses go to the untracked `studies/`, never over the committed `results/`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# The README's first command, shrunk to two 4-step runs by overrides (same grid, same folders).
TINY = ["--executor", "debug", "--only", r"w(8|16)-d4-p2-s0-", "--set", "train.steps=4", "--set", "eval.every=4",
        "--set", "eval.num_samples=128", "--set", "train.ckpt_every=4", "--set", "train.snapshot_every=4",
        "--set", "train.log_every=2"]


def test_readme_main_command_leaves_a_fresh_clone_clean(tmp_path, fashion_mnist_installed):
    clone = tmp_path / "clone"
    assert subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], capture_output=True).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # `python -m` from the clone runs its code

    def command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", *args], cwd=clone, env=env, capture_output=True, text=True,
                              timeout=1200)

    launched = command("sweeps.launch", "scaling_grid.yaml", "--wait", *TINY)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert "2 runs: 2 completed" in launched.stdout
    recorded = json.loads((clone / "studies" / "scaling_grid" / "manifest.json").read_text())
    assert recorded["grid_file"] == "sweeps/configs/scaling_grid.yaml"  # no machine's folders in a manifest
    plotted = command("analysis.plot_scaling", "studies/scaling_grid")
    assert plotted.returncode == 0, plotted.stdout + plotted.stderr
    fit = json.loads((clone / "studies" / "scaling_grid" / "analysis" / "fit.json").read_text())
    assert fit, "the analysis wrote an empty fit.json"
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True)
    assert status.stdout == ""
