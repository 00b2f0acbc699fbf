"""The three analysis notebooks execute end to end on the results of a tiny real sweep.

Once per session: a 4-run grid (width 32/64 × {MNG exp + width-aware LR, MNG off + constant LR})
through the sweep engine with the real trainer on Fashion-MNIST, a tiny coordinate check, and a
2-trial Optuna LR search (one per width). Each notebook then runs in a fresh python3 kernel
with GATSCALE_RESULTS (and GATSCALE_LR_SEARCH) pointing at those folders.
"""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

from gat import coord_check
from gat.data.vae import FMNIST_VAE_DIR
from gat.eval.features import FMNIST_CLASSIFIER
from sweeps import launch, tune

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("early_layer_use", "instability", "scaling")
TINY = {"train.steps": 20, "eval.every": 10, "eval.num_samples": 64, "train.ckpt_every": 10,
        "train.snapshot_every": 20, "logging.wandb": "off"}


@pytest.fixture(scope="session")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    missing = [str(p) for p in (FMNIST_VAE_DIR, FMNIST_CLASSIFIER) if not p.exists()]
    # The assets are committed; their absence is a broken checkout, not a reason to skip.
    assert not missing, (f"the Fashion-MNIST assets are missing ({', '.join(missing)}); run "
                         "scripts/train_fmnist_vae.py and scripts/train_fmnist_classifier.py")
    root = tmp_path_factory.mktemp("notebooks")
    grid = root / "tiny.yaml"
    common = {"base": "gat/configs/fmnist_smoke.yaml", "set": TINY, "resources": {"timeout_min": 30}}
    grid.write_text(yaml.safe_dump({
        **common, "axes": {"model.width": [32, 64]},
        "zip": [{"mng.mode": ["exp", "off"], "train.lr_rule": ["width_aware", "constant"]}],
    }))
    sweep = root / "sweep"
    assert launch.main([str(grid), "--out", str(sweep), "--executor", "debug"]) == 0
    assert coord_check.main(["--widths", "16", "32", "--rules", "constant", "mup", "--steps", "1",
                             "--head-dim", "8", "--batch", "8", "--out", str(sweep / "coord_check")]) == 0
    search = root / "lrs.yaml"
    search.write_text(yaml.safe_dump({
        **common, "axes": {"model.width": [32, 64]},
        "search": {"low": 1e-4, "high": 1e-3, "n_trials": 1, "parallel": 1, "metric": "fd_fmnist"},
    }))
    lr_search = root / "lr_search"
    assert tune.main([str(search), "--out", str(lr_search), "--executor", "debug"]) == 0
    return {"sweep": sweep, "lr_search": lr_search}


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name: str, results: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    path = ROOT / "notebooks" / f"{name}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        f"{path.name} is committed with outputs; clear them"
    assert "parameters" in notebook.cells[1].metadata.get("tags", []), "the parameter cell comes first"
    # The kernel inherits this environment: the overrides, and the repo on the import path.
    monkeypatch.setenv("GATSCALE_RESULTS", str(results["sweep"]))
    monkeypatch.setenv("GATSCALE_LR_SEARCH", str(results["lr_search"]))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum(1 for o in outputs if "image/png" in o.get("data", {})) >= 3  # figures were drawn
