"""The stability map (analysis.stability, python -m analysis.plot_stability) on synthetic run
folders drawn from a known boundary: the slopes' CIs contain the truth, an uncrossed boundary is
reported as such, and bad input is one error line with nothing written."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import plot_stability
from analysis.load import AnalysisError, final_rows, load_study_table
from analysis.stability import stability_map
from run_folders import write_sweep

WIDTHS = (16, 32, 64, 128, 256)
LRS = tuple(2.0 ** k for k in range(-12, -1))  # 2.4e-4 … 0.25, 2× apart
TRUE_SLOPE = {"constant": -1.0, "width_aware": 0.0}  # log boundary against log width
BOUNDARY_AT_16 = 0.045  # between grid points, so the bracket is not pinned to one


def true_boundary(rule: str, width: int) -> float:
    return BOUNDARY_AT_16 * (width / 16) ** TRUE_SLOPE[rule]


def synthetic_runs(rng: np.random.Generator, rules=("constant", "width_aware"), widths=WIDTHS, lrs=LRS,
                   seeds=(0, 1), never_unstable: tuple[str, int] | None = None) -> list[dict]:
    """write_sweep entries: each seed's boundary is the truth × a log-normal jitter (sd 0.25 in
    ln); above it a run collapses (within 4×) or diverges; the FD is a parabola in log2 LR
    around a quarter of the boundary plus noise."""
    entries = []
    for rule in rules:
        for width in widths:
            for seed in seeds:
                boundary = true_boundary(rule, width) * math.exp(rng.normal(0, 0.25))
                for lr in lrs:
                    if (rule, width) == never_unstable or lr <= boundary:
                        state, fd = "completed", 150 + 12 * math.log2(lr / (boundary / 4)) ** 2 + rng.normal(0, 3)
                    else:
                        state, fd = ("collapsed", 320.0) if lr <= 4 * boundary else ("diverged", 400.0)
                    name = f"{rule}-w{width}-lr{lr:.3g}-s{seed}"
                    entries.append({"name": name, "run": {
                        "width": width, "heads": width // 8, "depth": 4, "lr_rule": rule, "base_lr": lr,
                        "seed": seed, "state": state, "evals": [(100, {"fd_fmnist": fd + 50}), (200, {"fd_fmnist": fd})]}})
    return entries


def analyse(sweep: Path, resamples: int = 300):
    table = load_study_table(sweep)
    return stability_map(final_rows(table, "fd_fmnist"), "fd_fmnist", n_resamples=resamples, seed=1)


@pytest.fixture(scope="module")
def known_map(tmp_path_factory):
    sweep = write_sweep(tmp_path_factory.mktemp("stab") / "sweep", synthetic_runs(np.random.default_rng(0)))
    return sweep, analyse(sweep)


def test_recovered_slopes_contain_the_truth(known_map):
    _, result = known_map
    for rule, truth in TRUE_SLOPE.items():
        boundary = result.slopes["slopes"][rule]["boundary"]
        low, high = boundary["ci"]
        assert low <= truth <= high, (rule, boundary)
        assert high - low < 0.6  # informative, not merely wide
        optimum = result.slopes["slopes"][rule]["optimum"]  # the optimum tracks the boundary here
        assert optimum["ci"][0] <= truth <= optimum["ci"][1], (rule, optimum)


def test_every_width_has_a_bracket_around_the_truth_and_an_optimum(known_map):
    _, result = known_map
    table = result.table
    assert len(table) == 2 * len(WIDTHS)
    assert (table["note"].eq("") | table["note"].str.startswith("stable again above the first failure at")).all()
    for row in table.itertuples(index=False):
        rule, width = row[0], row[1]
        # with two jittered seeds the bracket brackets the truth within the jitter
        assert row.boundary_low / 2 <= true_boundary(rule, width) <= row.boundary_high * 2
        assert row.best_lr_low <= row.best_lr <= row.best_lr_high and row.best_fd_low <= row.best_fd
        assert row.best_lr < row.min_unstable_lr


def test_mismatch_rows_and_files(known_map, tmp_path):
    sweep, _ = known_map
    out = tmp_path / "out"
    assert plot_stability.main([str(sweep), "--out", str(out), "--bootstrap", "50"]) == 0
    for name in ("stability.csv", "stability_cells.csv", "slopes.json", "lr_mismatch.csv", "lr_mismatch.md",
                 "fd_vs_lr.png", "boundary_optimum.png", "results.csv"):
        assert (out / name).is_file(), name
    clone = tmp_path / "clone" / "study"  # a fresh clone: the committed analysis/ without the run folders
    (clone / "analysis").mkdir(parents=True)
    (clone / "analysis" / "results.csv").write_bytes((out / "results.csv").read_bytes())
    again = tmp_path / "again"
    assert plot_stability.main([str(clone), "--out", str(again), "--bootstrap", "50"]) == 0
    assert pd.read_csv(again / "stability.csv").equals(pd.read_csv(out / "stability.csv"))
    table = pd.read_csv(out / "stability.csv")
    assert {"train.lr_rule", "model.width", "max_stable_lr", "min_unstable_lr", "best_lr", "best_fd"} <= set(table)
    slopes = json.loads((out / "slopes.json").read_text())["slopes"]
    assert set(slopes) == {"constant", "width_aware"} and set(slopes["constant"]) == {"boundary", "optimum"}
    mismatch = pd.read_csv(out / "lr_mismatch.csv")
    constant = mismatch[mismatch["train.lr_rule"] == "constant"].set_index("model.width")
    # the widest model at the narrowest's best LR (about 16/4 = 4× its own boundary) fails
    assert constant.loc[256, "lr_of_width"] == 16 and constant.loc[256, "outcome"] == "unstable"
    assert constant.loc[16, "outcome"] == "stable"  # the reverse trains, too slowly
    aware = mismatch[mismatch["train.lr_rule"] == "width_aware"].set_index("model.width")
    assert aware.loc[256, "n_unstable"] == 0


def test_an_uncrossed_boundary_is_reported_not_invented(tmp_path):
    entries = synthetic_runs(np.random.default_rng(2), rules=("constant",), widths=(16, 64, 256),
                             never_unstable=("constant", 256))
    result = analyse(write_sweep(tmp_path / "sweep", entries), resamples=100)
    row = result.table.set_index("model.width").loc[256]
    assert math.isnan(row["boundary_lr"]) and math.isnan(row["min_unstable_lr"])
    assert row["note"].startswith("boundary not crossed: every base LR up to 0.25 stable")
    boundary = result.slopes["slopes"]["constant"]["boundary"]
    assert boundary["widths"] == [16, 64] and boundary["widths_left_out"] == [256]
    assert not math.isnan(row["best_lr"])  # the optimum still exists


def test_a_stable_run_above_the_first_failure_does_not_move_the_boundary(tmp_path):
    # The map's own runs: at width 64 under the constant rule 0.0768 and 0.1536 collapsed, while
    # 0.3072 and 0.6144 never learned (FD ~400 from the start) and so completed "stable".
    outcome = {0.0096: "completed", 0.0192: "completed", 0.0384: "completed", 0.0768: "collapsed",
               0.1536: "collapsed", 0.3072: "completed", 0.6144: "completed"}
    entries = [{"name": f"w64-lr{lr:g}", "run": {
        "width": 64, "heads": 8, "depth": 4, "lr_rule": "constant", "base_lr": lr, "seed": 0, "state": state,
        "evals": [(100, {"fd_fmnist": 300.0}), (200, {"fd_fmnist": 250.0 if lr < 0.05 else 400.0})]}}
        for lr, state in outcome.items()]
    row = analyse(write_sweep(tmp_path / "sweep", entries), resamples=50).table.iloc[0]
    assert (row["max_stable_lr"], row["min_unstable_lr"]) == (0.0384, 0.0768)
    assert (row["boundary_low"], row["boundary_high"]) == (0.0384, 0.0768)
    assert row["note"] == "stable again above the first failure at 0.307, 0.614"


def test_one_crossed_width_gives_no_slope_and_says_why(tmp_path):
    entries = synthetic_runs(np.random.default_rng(3), rules=("constant",), widths=(16, 256), seeds=(0,),
                             never_unstable=("constant", 256))
    slope = analyse(write_sweep(tmp_path / "sweep", entries), resamples=50).slopes["slopes"]["constant"]["boundary"]
    assert slope["slope"] is None and slope["ci"] == [None, None]
    assert slope["missing"] == "a boundary at 1 width(s): a slope needs 2"


def test_no_finished_run_is_an_analysis_error(tmp_path):
    entries = synthetic_runs(np.random.default_rng(4), rules=("constant",), widths=(16,), lrs=(0.01,), seeds=(0,))
    entries[0]["run"]["state"] = "running"
    with pytest.raises(AnalysisError, match="no run has finished"):
        analyse(write_sweep(tmp_path / "sweep", entries))


@pytest.mark.parametrize("case", ["missing folder", "nothing finished", "bad bootstrap"])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, capsys, case):
    sweep = tmp_path / "nope"
    argv = [str(sweep)]
    if case == "nothing finished":
        entries = synthetic_runs(np.random.default_rng(5), rules=("constant",), widths=(16,), lrs=(0.01,), seeds=(0,))
        entries[0]["run"]["state"] = "failed"
        sweep = write_sweep(tmp_path / "sweep", entries)
        argv = [str(sweep)]
    elif case == "bad bootstrap":
        argv += ["--bootstrap", "0"]
    out = tmp_path / "out"
    try:
        code = plot_stability.main([*argv, "--out", str(out)])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists()


def test_bracket_regex_selects_the_extra_seeds_of_the_bundled_grid():
    # The pattern is built from the sweep engine's run names: tie it to the bundled grid's plan.
    import re

    from analysis.stability import bracket_regex
    from sweeps.plan import make_plan
    from sweeps.spec import load_grid

    names = [r.name for r in make_plan(load_grid("lr_stability_cpu.yaml"), Path("/nonexistent")).runs]
    table = pd.DataFrame([
        {"train.lr_rule": "constant", "model.width": 64, "max_stable_lr": 9.6e-3, "min_unstable_lr": 1.92e-2},
        {"train.lr_rule": "width_aware", "model.width": 128, "max_stable_lr": 0.3072, "min_unstable_lr": math.nan},
    ])
    chosen = sorted(n for n in names if re.search(bracket_regex(table), n))
    assert len(chosen) == 3 and all("-s1-" in n for n in chosen), chosen
    assert {n.split("-s1-")[0] for n in chosen} == {
        "w64-d4-p2-lr_constant-blr0.0096", "w64-d4-p2-lr_constant-blr0.0192", "w128-d4-p2-lr_width_aware-blr0.3072"}
