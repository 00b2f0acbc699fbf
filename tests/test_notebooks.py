"""The analysis notebooks run as a user runs them after cloning: from notebooks/ (where
Jupyter starts the kernel), on what git holds of their committed default study (the tidy tables
under results/<study>/, no run folders), writing only to a scratch folder.

Each notebook executes in a fresh python3 kernel on a copy of the committed files of its study
(GATSCALE_RESULTS), so run folders that happen to lie in this checkout play no part. It must draw
the figures those tables allow into GATSCALE_FIGURES and leave every file under notebooks/,
results/ and the study copy as it was (no stray notebooks/results/, no committed PNG replaced).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from analysis import paths
from analysis.load import AnalysisError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = {  # notebook: (its default study, committed; the figures its committed tables allow)
    "early_layer_use": ("results/mng_cpu", {"early_share"}),
    "forecast": ("results/isoflop_cpu", {"ladder", "learning_curves", "recommendation", "n_opt_estimators", "backtest"}),
    "instability": ("results/lr_rule_cpu", {"output_change", "divergence_rate", "divergence_step", "coord_check",
                                        "fd_vs_lr", "boundary_optimum"}),  # the last two: results/lr_stability_cpu
    "scaling": ("results/scaling_grid", {"scaling_gflops", "compute", "learning_curves", "residuals"}),
}


def committed_copy(study: str, root: Path) -> Path:
    """The files git holds under ``study``, copied below ``root``: what a fresh clone has."""
    listed = subprocess.run(["git", "ls-files", "-z", "--", study], cwd=ROOT, capture_output=True, check=True)
    files = [name for name in listed.stdout.decode().split("\0") if name]
    assert files, f"nothing committed under {study}"
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, root / name)
    return root / study


def snapshot(*folders: Path) -> dict[Path, tuple[int, int]]:
    """Every file under ``folders`` (tracked, ignored or untracked) with its size and mtime."""
    return {path: (path.stat().st_size, path.stat().st_mtime_ns)
            for folder in folders for path in folder.rglob("*") if path.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_the_committed_tables(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default, figures = NOTEBOOKS[name]
    path = ROOT / "notebooks" / f"{name}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        f"{path.name} is committed with outputs; clear them"
    parameters = notebook.cells[1]
    assert "parameters" in parameters.metadata.get("tags", []), "the parameter cell comes first"
    assert f'RESULTS_DIR = "{default}"' in parameters.source, "the default study is the committed one"
    study = committed_copy(default, tmp_path / "clone")
    scratch = tmp_path / "figures"
    # The kernel inherits this environment: the study, the scratch folder, the repo on the import path.
    monkeypatch.setenv("GATSCALE_RESULTS", str(study))
    monkeypatch.setenv("GATSCALE_FIGURES", str(scratch))
    monkeypatch.delenv("GATSCALE_UPDATE_RESULTS", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    before = snapshot(ROOT / "notebooks", ROOT / "results", study)

    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()

    assert snapshot(ROOT / "notebooks", ROOT / "results", study) == before, "the notebook wrote outside its scratch folder"
    drawn = {png.stem for png in scratch.glob("*/*.png")}  # <study name>/: a notebook may read a second study
    assert figures <= drawn, f"missing figures: {sorted(figures - drawn)}"
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.output_type == "error"]
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= len(figures)


def test_paths_resolve_from_the_repository_not_the_working_directory(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for variable in ("GATSCALE_RESULTS", "GATSCALE_FIGURES", "GATSCALE_UPDATE_RESULTS"):
        monkeypatch.delenv(variable, raising=False)
    for default, _ in NOTEBOOKS.values():
        assert paths.study_dir(default) == ROOT / default
    monkeypatch.setenv("GATSCALE_RESULTS", "results/mng_cpu")  # overrides the parameter, from the repo root
    assert paths.study_dir("results/scaling_grid") == ROOT / "results" / "mng_cpu"
    monkeypatch.setenv("GATSCALE_RESULTS", str(tmp_path / "nowhere"))
    with pytest.raises(AnalysisError, match="no such study folder"):
        paths.study_dir("results/mng_cpu")

    study = tmp_path / "study"
    study.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    scratch = paths.output_dir(study)  # by default a new temporary folder: nothing committed changes
    assert scratch.parent == tmp_path / "tmp" and scratch.is_dir()
    monkeypatch.setenv("GATSCALE_FIGURES", str(tmp_path / "figures"))
    assert paths.output_dir(study) == tmp_path / "figures" / "study"
    monkeypatch.setenv("GATSCALE_UPDATE_RESULTS", "1")  # only on request: the study's own analysis/
    assert paths.output_dir(study) == study / "analysis" and (study / "analysis").is_dir()


@pytest.mark.slow
def test_notebook_leaves_no_temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without GATSCALE_FIGURES a notebook writes into a temporary folder: gone once it ran."""
    notebook = nbformat.read(ROOT / "notebooks" / "scaling.ipynb", as_version=4)
    study = committed_copy(NOTEBOOKS["scaling"][0], tmp_path / "clone")
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setenv("GATSCALE_RESULTS", str(study))
    for name in ("GATSCALE_FIGURES", "GATSCALE_UPDATE_RESULTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert any("gatscale-scaling_grid-" in str(output) for output in outputs), "the notebook names its folder"
    assert not [output for output in outputs if output.output_type == "error"]
    assert list(temp.iterdir()) == []
