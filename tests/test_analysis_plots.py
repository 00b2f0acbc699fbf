"""The CLIs end to end (plot_scaling, plot_lr_transfer) and the house style of analysis.plots."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import plot_lr_transfer, plot_scaling, plots
from run_folders import PUBLISHED, curve, write_run, write_sweep

SIZES = [(384, 12, 6), (768, 12, 12), (1024, 24, 16), (1152, 28, 16)]


def scaling_sweep(root: Path) -> Path:
    """4 sizes × 2 seeds completed (final FID ∝ size^−0.5), plus a diverged run with evals,
    one diverged before its first eval, and one failed."""
    rng = np.random.default_rng(0)
    runs = []
    for width, depth, heads in SIZES:
        for seed in range(2):
            end = 200 * (width**2 * depth) ** -0.25 * np.exp(rng.normal(0, 0.03))
            runs.append({"name": f"w{width}-s{seed}", "coords": {"model.width": width, "seed": seed},
                         "run": {"width": width, "depth": depth, "heads": heads, "seed": seed,
                                 "evals": curve([100, 200, 400, 800], 5 * end, end)}})
    runs += [
        {"name": "diverged", "coords": {"model.width": 1152, "seed": 2},
         "run": {"width": 1152, "depth": 28, "heads": 16, "state": "diverged", "last_step": 350,
                 "evals": curve([100, 200], 20, 15)}},
        {"name": "early", "coords": {"model.width": 768, "seed": 2},
         "run": {"width": 768, "heads": 12, "state": "diverged", "last_step": 40, "log_every": 20}},
        {"name": "oom", "coords": {"model.width": 1024, "seed": 2},
         "run": {"width": 1024, "depth": 24, "heads": 16, "state": "failed", "reason": "CUDA OOM", "last_step": 0}},
    ]
    return write_sweep(root / "scaling", runs)


def test_scaling_report(tmp_path: Path) -> None:
    sweep = scaling_sweep(tmp_path)
    out = tmp_path / "out"
    assert plot_scaling.main([str(sweep), "--out", str(out), "--bootstrap", "100", "--seed", "3"]) == 0
    for name in ("scaling_gflops.png", "compute.png", "learning_curves.png", "residuals.png", "fit.json",
                 "results.csv", "results.parquet", "report.md"):
        assert (out / name).stat().st_size > 0, name
    fit = json.loads((out / "fit.json").read_text())
    assert fit["metric"] == "fid50k" and fit["x"] == "gflops" and fit["final"]["fit"]["n"] == 8
    assert fit["final"]["n_resamples"] == 100 and fit["final"]["seed"] == 3
    why = {e["run_id"]: e["why"] for e in fit["excluded"]}
    assert why == {"id-diverged": "diverged at step 350", "id-early": "diverged at step 40",
                   "id-oom": "failed: CUDA OOM"}
    lo, hi = fit["final"]["ci"]["b"]
    assert lo <= fit["final"]["fit"]["b"] <= hi
    assert fit["frontier"]["fit"]["n"] == len(fit["frontier"]["points"]) >= 2
    assert not {p["run_id"] for p in fit["frontier"]["points"]} & set(why)  # excluded: not in the fit
    report = (out / "report.md").read_text()
    assert "FID-50k ∝ GFLOPs^(−b), b = 0." in report and "3 run(s) excluded" in report
    assert "![compute](compute.png)" in report and fit["summary"] in report


def test_signs_are_stated_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A metric that rises with size: a negative b, written with one minus sign everywhere."""
    rows = "".join(f"{name},{2.0 ** i},{20 * 1.1 ** i * (1.03 if i % 2 else 0.97)}\n" for i, name in enumerate("ABCDEF"))
    (tmp_path / "t.csv").write_text("model,gflops,fid50k\n" + rows)
    out = tmp_path / "out"
    assert plot_scaling.main(["--table", str(tmp_path / "t.csv"), "--out", str(out), "--bootstrap", "50"]) == 0
    fit = json.loads((out / "fit.json").read_text())
    b, low = fit["final"]["fit"]["b"], fit["final"]["ci"]["b"][0]
    assert b < 0 and low < 0
    summary = fit["summary"]
    assert f"FID-50k ∝ GFLOPs^(−b), b = −{abs(b):.3f} (95% CI −{abs(low):.3f} to " in summary
    printed = capsys.readouterr().out
    assert f"b = -{abs(b):.4f} [95% CI -{abs(low):.4f} to " in printed  # ASCII minus on the terminal
    for text in (summary, (out / "report.md").read_text(), printed):
        assert not any(pair in text for pair in ("−-", "--", "-−", "−−", "–-", "–−")), text
    boot = plot_scaling.fitting.bootstrap_power_law([1, 2, 4], [10, 11, 12.5], ["a", "b", "c"], n_resamples=20)
    assert plots.law_text(boot, "fd_fmnist", "params").startswith("FD ∝ N^(−b), b = −0.")
    assert plots.number(-0.0001) == "0.000" and plots.number(float("nan")) == "n/a"


def test_a_frontier_from_one_run_is_neither_drawn_nor_fitted(tmp_path: Path) -> None:
    """The smallest model is best at every compute: the whole frontier is its learning curve."""
    runs = [{"name": f"w{width}", "coords": {"model.width": width},
             "run": {"width": width, "heads": 6, "evals": curve([100, 200, 400], start, end)}}
            for width, start, end in ((384, 50, 20), (768, 90, 60), (1152, 95, 70))]
    out = tmp_path / "out"
    assert plot_scaling.main([str(write_sweep(tmp_path / "one", runs)), "--out", str(out), "--bootstrap", "20"]) == 0
    fit = json.loads((out / "fit.json").read_text())
    assert "come from one run (id-w384)" in fit["frontier"]["skipped"] and "fit" not in fit["frontier"]
    assert "No compute-frontier fit: all 3 points of the compute frontier come from one run" in fit["summary"]
    assert (out / "compute.png").is_file()  # the learning curves over compute are still drawn


def test_excluded_runs_are_drawn(tmp_path: Path) -> None:
    args = plot_scaling.parse_args([str(scaling_sweep(tmp_path))])
    study = plot_scaling.load_study(args)
    boot = plot_scaling.fitting.bootstrap_power_law(study.used["gflops"], study.used["fid50k"],
                                                    study.used["run_id"], n_resamples=10)
    plots.apply_style()
    fig = plots.metric_vs_size(study.used, study.excluded, "gflops", "fid50k", boot, "r")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "diverged (excluded from fit)" in labels and "failed (excluded from fit)" in labels
    # The diverged run without an eval sits on the top edge: 3 excluded points drawn in all.
    drawn = sum(len(c.get_offsets()) for c in fig.axes[0].collections if c.get_gid() == "excluded")
    assert drawn == 3


def test_published_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pub"
    code = plot_scaling.main(["--table", str(PUBLISHED), "--x", "gflops", "--metric", "fid50k", "--out", str(out),
                              "--bootstrap", "200"])
    assert code == 0
    fit = json.loads((out / "fit.json").read_text())
    # The paper's −0.95 is the semi-log r of its log-x plot; in log-log space r is −0.994.
    assert fit["final"]["r_semilog"] == pytest.approx(-0.95, abs=0.005)
    assert fit["final"]["fit"]["r"] == pytest.approx(-0.994, abs=0.002)
    assert "r(log-log) = -0.994" in capsys.readouterr().out
    assert not (out / "compute.png").exists()  # no training compute in a published table
    assert plot_scaling.main(["--table", str(PUBLISHED), "--irreducible", "--bootstrap", "20", "--out", str(out)]) == 0
    fit = json.loads((out / "fit.json").read_text())
    assert fit["final"]["fit"]["irreducible"] and fit["final"]["fit"]["c"] >= 0


@pytest.mark.parametrize("case, message", [
    ("empty", "no run folders on disk"),
    ("no_metric", "no metric values"),
    ("bad_csv", "missing column(s) gflops, fid50k"),
    ("one_size", "need completed runs at 2 or more distinct gflops"),
    ("unknown_metric", "no values of 'is'"),
])
def test_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str) -> None:
    if case == "empty":
        argv = [str(tmp_path)]
    elif case == "no_metric":
        write_run(tmp_path / "r", state="diverged", last_step=30, log_every=10)
        argv = [str(tmp_path)]
    elif case == "bad_csv":
        (tmp_path / "t.csv").write_text("model,flops\nS/2,1\n")
        argv = ["--table", str(tmp_path / "t.csv"), "--metric", "fid50k"]
    elif case == "one_size":
        write_run(tmp_path / "r", evals=curve([10, 20], 9, 5))
        argv = [str(tmp_path)]
    else:
        write_run(tmp_path / "r", evals=curve([10, 20], 9, 5))
        argv = [str(tmp_path), "--metric", "is"]
    assert plot_scaling.main(argv + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize("values, excluded_why", [
    (["10", "8"], {}),  # exactly 2 runs: the documented minimum, r undefined
    (["10", "8", "inf", "5"], {"C": "fid50k = inf is not finite"}),
    (["10", "-3", "6", "5"], {"B": "fid50k = -3 is not positive (a power law needs > 0)"}),
    (["10", "", "6", "5"], {"B": "no fid50k value"}),
])
def test_edge_values_are_excluded_with_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                values: list[str], excluded_why: dict[str, str]) -> None:
    rows = "".join(f"{name},{2 ** i},{v}\n" for i, (name, v) in enumerate(zip("ABCD", values)))
    (tmp_path / "t.csv").write_text("model,gflops,fid50k\n" + rows)
    out = tmp_path / "out"
    assert plot_scaling.main(["--table", str(tmp_path / "t.csv"), "--out", str(out), "--bootstrap", "20"]) == 0
    fit = json.loads((out / "fit.json").read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN
    assert {e["run_id"]: e["why"] for e in fit["excluded"]} == excluded_why
    assert fit["final"]["fit"]["n"] == len(values) - len(excluded_why)
    printed = capsys.readouterr().out
    assert "b = " in printed and ("r(log-log) = n/a" in printed) == (len(values) == 2)


def test_non_numeric_metric_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "t.csv").write_text("model,gflops,fid50k\nA,1,10\nB,2,abc\nC,4,6\n")
    assert plot_scaling.main(["--table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == "error: non-numeric fid50k value 'abc' (run B): fid50k must be a number\n"
    assert not (tmp_path / "out" / "fit.json").exists()


def lr_sweep(root: Path) -> Path:
    """2 rules × 3 widths × 5 LRs × 2 seeds. Under "mup" the optimum stays at 2^-10; under
    "constant" it halves per width doubling; the largest LR diverges at the widest width."""
    runs = []
    for rule in ("constant", "mup"):
        for width in (256, 512, 1024):
            doublings = np.log2(width / 256)
            best = -10 - (doublings if rule == "constant" else 0)
            for log_lr in range(-13, -8):
                for seed in range(2):
                    diverged = rule == "constant" and width == 1024 and log_lr == -9 and seed == 0
                    fid = 10 + (log_lr - best) ** 2 + 0.1 * seed
                    runs.append({"name": f"{rule}-{width}-{log_lr}-{seed}", "run": {
                        "width": width, "heads": 4, "lr_rule": rule, "base_lr": 2.0**log_lr, "seed": seed,
                        "state": "diverged" if diverged else "completed",
                        "evals": [] if diverged else [(100, {"fd_fmnist": fid})], "last_step": 100}})
    return write_sweep(root / "lr", runs)


def test_lr_transfer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert plot_lr_transfer.main([str(lr_sweep(tmp_path)), "--out", str(out)]) == 0
    for name in ("lr_transfer.png", "lr_divergence.png", "lr_optima.md", "lr_optima.csv", "lr_grid.csv"):
        assert (out / name).stat().st_size > 0, name
    optima = pd.read_csv(out / "lr_optima.csv")
    mup = optima[optima["train.lr_rule"] == "mup"]
    constant = optima[optima["train.lr_rule"] == "constant"]
    assert np.log2(mup["best_lr"]).tolist() == [-10, -10, -10]
    assert mup["slope_per_doubling"].iloc[0] == pytest.approx(0.0)
    assert constant["drift_per_doubling"].dropna().tolist() == pytest.approx([-1.0, -1.0])
    assert constant["slope_per_doubling"].iloc[0] == pytest.approx(-1.0)
    assert constant["at_grid_edge"].tolist() == [False, False, False]
    grid = pd.read_csv(out / "lr_grid.csv")
    cell = grid[(grid["train.lr_rule"] == "constant") & (grid["model.width"] == 1024) & (grid["train.base_lr"] == 2.0**-9)]
    assert cell["frac_diverged"].item() == 0.5 and cell["n_completed"].item() == 1
    assert "| train.lr_rule |" in (out / "lr_optima.md").read_text()


def test_lr_transfer_needs_a_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert plot_lr_transfer.main([str(tmp_path)]) == 2
    assert "no run folders on disk" in capsys.readouterr().err


def test_lr_transfer_needs_two_learning_rates_per_width(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [{"name": f"{rule}-{width}", "run": {"width": width, "heads": 4, "lr_rule": rule, "base_lr": 1e-3,
                                                "evals": [(100, {"fd_fmnist": 100.0 - width / 10})]}}
            for rule in ("constant", "width_aware") for width in (256, 512)]
    sweep = write_sweep(tmp_path / "one_lr", runs)
    assert plot_lr_transfer.main([str(sweep)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: LR transfer needs completed runs with a fd_fmnist value at 2 or more base "
                          "learning rates per width") and err.count("\n") == 1
    assert "constant: width 256 (1 LR), 512 (1 LR); width_aware: width 256 (1 LR), 512 (1 LR)" in err
    assert not (sweep / "analysis").exists()  # nothing written
    # A width with 2 LRs gets its optimum; the one-LR widths are left out and named.
    write_run(sweep / "runs" / "constant-256-b", width=256, heads=4, lr_rule="constant", base_lr=2e-3,
              evals=[(100, {"fd_fmnist": 70.0})])
    assert plot_lr_transfer.main([str(sweep / "runs")]) == 0
    optima = pd.read_csv(sweep / "runs" / "analysis" / "lr_optima.csv")
    assert optima[["train.lr_rule", "model.width", "best_lr"]].values.tolist() == [["constant", 256, 2e-3]]
    assert "Left out, fewer than 2 base LRs with a fd_fmnist value: constant: width 512 (1 LR)" in capsys.readouterr().out


def test_size_labels() -> None:
    assert plots.size_label(384, 2) == "S/2" and plots.size_label(1152, 4) == "XL/4"
    assert plots.size_label(512) == "width 512" and plots.size_label(32, 2) == "width 32, patch 2"
    assert plots.size_label(None, None, "B/4") == "B/4"
    assert plots.axis_label("gflops") == "GFLOPs (G forward, DiT convention)"


def test_where_selects_runs_and_names_bad_selections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = scaling_sweep(tmp_path)
    out = tmp_path / "seed0"
    assert plot_scaling.main([str(sweep), "--where", "seed=0", "--out", str(out), "--bootstrap", "50"]) == 0
    fit = json.loads((out / "fit.json").read_text())
    assert fit["final"]["fit"]["n"] == 4  # one completed run per size
    assert plot_scaling.main([str(sweep), "--where", "seed=7", "--out", str(out)]) == 2
    assert "no run has seed=7 (values: 0, 1, 2)" in capsys.readouterr().err
    assert plot_scaling.main([str(sweep), "--where", "colour=red", "--out", str(out)]) == 2
    assert "no column 'colour'" in capsys.readouterr().err
    assert plot_scaling.main([str(sweep), "--where", "seed", "--out", str(out)]) == 2
    assert "expected COLUMN=VALUE" in capsys.readouterr().err
