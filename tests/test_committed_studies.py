"""The analysis CLIs on the committed studies of a fresh clone (results/<study>/ holds the tidy
tables but no run folders): they read the committed table, say so, and reproduce the committed
fits (the committed fits were made with the CLI's default bootstrap seed) to 1e-7 relative: the
float tables round-trip through CSV, and numpy/scipy releases move the last bits of a fit."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis import plot_lr_transfer, plot_scaling

ROOT = Path(__file__).resolve().parent.parent
# (study, --where conditions, the committed report folder it reproduces)
COMMITTED_FITS = [
    ("scaling_cpu", [], "analysis"),
    ("scaling_grid", [], "analysis"),
    ("mng_cpu", ["mng.mode=exp"], "analysis/scaling_exp"),
    ("mng_cpu", ["mng.mode=off"], "analysis/scaling_off"),
    ("lr_rule_cpu", ["train.lr_rule=constant"], "analysis/scaling_constant"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("study", "where", "report"), COMMITTED_FITS, ids=lambda v: str(v))
def test_plot_scaling_reproduces_the_committed_fit(study, where, report, tmp_path, capsys):
    folder = ROOT / "results" / study
    assert not (folder / "runs").exists(), "the test is about a checkout without run folders"
    argv = [str(folder), "--out", str(tmp_path)] + [arg for cond in where for arg in ("--where", cond)]
    assert plot_scaling.main(argv) == 0
    assert "read the committed table" in capsys.readouterr().out
    assert_same_numbers(json.loads((tmp_path / "fit.json").read_text()), json.loads((folder / report / "fit.json").read_text()))


def assert_same_numbers(got: object, want: object, path: str = "fit", rel: float = 1e-7) -> None:
    """The same JSON structure, strings and flags equal, floats equal to `rel` (relative)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), path
        for key in want:
            assert_same_numbers(got[key], want[key], f"{path}.{key}", rel)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_numbers(g, w, f"{path}[{i}]", rel)
    elif isinstance(want, float) and not isinstance(want, bool):
        assert got == pytest.approx(want, rel=rel, abs=1e-12), path
    else:
        assert got == want, path


def test_plot_lr_transfer_reads_the_committed_table(tmp_path, capsys):
    """lr_rule_cpu has one base LR per width (its rules differ, not its base LR): the error says
    that, not that the results hold no metric values."""
    assert plot_lr_transfer.main([str(ROOT / "results/lr_rule_cpu"), "--out", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert "read the committed table" in out and "results/lr_rule_cpu/analysis/scaling_constant/results.csv" in out
    assert "2 or more base learning rates per width" in err and "width 16 (1 LR)" in err
    assert not (tmp_path / "out").exists()


def test_no_run_folders_and_no_table_is_named(tmp_path, capsys):
    study = tmp_path / "study"
    shutil.copytree(ROOT / "results/scaling_grid", study, ignore=shutil.ignore_patterns("analysis"))
    for main in (plot_scaling.main, plot_lr_transfer.main):
        assert main([str(study), "--out", str(tmp_path / "out")]) == 2
        assert "no run folders on disk and no committed analysis/results.csv" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_default_out_of_a_committed_study_rewrites_nothing(tmp_path):
    """Without --out, a report from the committed table goes to studies/<study>/analysis under
    the current folder, not over the committed files."""
    study = tmp_path / "results" / "scaling_grid"
    shutil.copytree(ROOT / "results/scaling_grid", study)
    before = {p: p.read_bytes() for p in study.rglob("*") if p.is_file()}
    done = subprocess.run([sys.executable, "-m", "analysis.plot_scaling", "results/scaling_grid"],
                          cwd=tmp_path, capture_output=True, text=True, env=_env())
    assert done.returncode == 0, done.stderr
    assert {p: p.read_bytes() for p in study.rglob("*") if p.is_file()} == before
    assert (tmp_path / "studies/scaling_grid/analysis/fit.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("study", ["mng_cpu", "lr_rule_cpu"])
def test_ablations_reproduce_the_committed_tables_without_writing_over_them(study, tmp_path):
    """`analysis.ablations results/<study>` on a checkout without run folders: the committed
    tables come out again (to 1e-7), into studies/<study>/analysis, and results/ is untouched."""

    copy = tmp_path / "results" / study
    shutil.copytree(ROOT / "results" / study, copy)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    done = subprocess.run([sys.executable, "-m", "analysis.ablations", f"results/{study}"],
                          cwd=tmp_path, capture_output=True, text=True, env=_env())
    assert done.returncode == 0, done.stderr
    assert "from the committed tables" in done.stdout
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
    made = sorted((tmp_path / "studies" / study / "analysis").glob("*.csv"))
    assert made
    for table in made:
        pd.testing.assert_frame_equal(pd.read_csv(table), pd.read_csv(copy / "analysis" / table.name), rtol=1e-7)


@pytest.mark.slow
def test_forecast_reproduces_the_committed_forecast(tmp_path):
    """`analysis.forecast results/isoflop_cpu --budget 1e14 --drop-early 0.2` on a checkout
    without run folders gives the committed forecast (set down before its validation runs)."""
    from analysis import forecast

    folder = ROOT / "results/isoflop_cpu"
    committed = json.loads((folder / "analysis/forecast.json").read_text())
    argv = [str(folder), "--budget", "1e14", "--drop-early", "0.2", "--out", str(tmp_path)]
    assert forecast.main(argv) == 0
    got = json.loads((tmp_path / "forecast.json").read_text())
    for key in ("budget", "data", "recommendation", "estimators", "law", "extrapolation", "warnings"):
        assert_same_numbers(got[key], committed[key], key)


def test_forecast_names_a_study_that_is_not_an_isoflop_ladder(tmp_path, capsys):
    from analysis import forecast

    assert forecast.main([str(ROOT / "results/scaling_cpu"), "--budget", "1e14", "--out", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert "read the committed table" in out
    assert err.startswith("error: no budget was trained at three or more sizes") and "not an isoFLOP ladder" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_readme_table_example_leaves_the_checkout_clean(tmp_path):
    """The README's `--table published.csv` example, run from the root of a checkout with the
    CSV at the root and under tests/data: git status stays clean (studies/ is ignored)."""
    clone = tmp_path / "clone"
    for part in ("analysis", "gat", "tests/data/published_gat_v1.csv", ".gitignore"):
        copy = shutil.copy if (ROOT / part).is_file() else shutil.copytree
        (clone / part).parent.mkdir(parents=True, exist_ok=True)
        copy(ROOT / part, clone / part, **({} if copy is shutil.copy else
                                           {"ignore": shutil.ignore_patterns("assets", "__pycache__")}))
    shutil.copy(clone / "tests/data/published_gat_v1.csv", clone / "published.csv")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=clone, check=True)
    subprocess.run(["git", "add", "-A"], cwd=clone, check=True)
    subprocess.run([*git, "commit", "-qm", "checkout"], cwd=clone, check=True)
    for table in ("published.csv", "tests/data/published_gat_v1.csv"):
        done = subprocess.run([sys.executable, "-m", "analysis.plot_scaling", "--table", table, "--x", "gflops"],
                              cwd=clone, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone,
                            capture_output=True, text=True, check=True).stdout
    assert status == ""
    assert (clone / "studies/published/analysis/fit.json").is_file()
    assert (clone / "studies/published_gat_v1/analysis/fit.json").is_file()


def _env() -> dict[str, str]:
    """The environment with this checkout importable (the clone has no install of its own)."""
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_the_validation_runs_are_scored_against_the_committed_forecast():
    """results/isoflop_cpu's validation.csv: the six pre-registered runs (three sizes x two
    seeds at the forecast's budget), each with a measured FD, and the recommended size's
    prediction is forecast.json's, the one committed before the runs."""
    folder = ROOT / "results/isoflop_cpu/analysis"
    forecast = json.loads((folder / "forecast.json").read_text())
    rows = pd.read_csv(folder / "validation.csv")
    assert list(rows.columns[:7]) == ["size", "seed", "train_flops", "g_gflops", "predicted_mean", "pi_low", "pi_high"]
    assert sorted(zip(rows["size"], rows["seed"])) == [
        (size, seed) for size in ("w160-d8-h20-p2", "w32-d8-h4-p2", "w48-d8-h6-p2") for seed in (0, 1)]
    assert rows["measured"].notna().all()
    assert (abs(rows["train_flops"] / forecast["budget"] - 1) < 0.01).all()
    recommended = rows[rows["size"] == forecast["recommendation"]["size"]]
    predicted = forecast["recommendation"]["predicted"]
    assert len(recommended) == 2
    for _, row in recommended.iterrows():
        assert_same_numbers([row["predicted_mean"], row["pi_low"], row["pi_high"]], [predicted["mean"], *predicted["pi"]],
                            "validation.csv against forecast.json", rel=1e-9)
