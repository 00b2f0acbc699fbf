"""analysis.fit: power-law recovery, bootstrap over runs, the frontier, hold-out, JSON output."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis.fit import (
    bootstrap_power_law, ci_text, fit_power_law, frontier, frontier_arrays, holdout, log_pearson, residuals,
)

# Bootstrap CIs are percentiles: 400 resamples pin a 95% interval well enough for a test
# (the CLI default stays 1,000).
RESAMPLES = 400


def synthetic_study(seed: int = 0, b: float = 0.45, a: float = 50.0, sigma: float = 0.05):
    """6 sizes × 2 seeds, y = a·x^−b with multiplicative log-normal noise."""
    rng = np.random.default_rng(seed)
    sizes = np.geomspace(1.4, 120.0, 6)
    x = np.repeat(sizes, 2)
    y = a * x**-b * np.exp(rng.normal(0, sigma, len(x)))
    runs = np.array([f"r{i}" for i in range(len(x))])
    return x, y, runs


def test_known_exponent_inside_tight_bootstrap_interval() -> None:
    x, y, runs = synthetic_study()
    boot = bootstrap_power_law(x, y, runs, n_resamples=RESAMPLES, seed=1)
    low, high = boot.ci["b"]
    assert low <= 0.45 <= high
    assert high - low < 0.08  # tight: 5% noise over two decades
    assert boot.fit.b == pytest.approx(0.45, abs=0.03) and boot.fit.a == pytest.approx(50, rel=0.15)
    assert boot.fit.r < -0.99 and boot.n_failed == 0 and boot.n_runs == 12
    assert boot.ci["a"][0] <= boot.fit.a <= boot.ci["a"][1]


def test_bootstrap_is_seeded() -> None:
    x, y, runs = synthetic_study()
    first = bootstrap_power_law(x, y, runs, n_resamples=50, seed=7)
    again = bootstrap_power_law(x, y, runs, n_resamples=50, seed=7)
    other = bootstrap_power_law(x, y, runs, n_resamples=50, seed=8)
    assert first.ci == again.ci and first.ci != other.ci


def test_irreducible_term_recovered() -> None:
    x = np.geomspace(1, 1000, 10)
    y = 30 * x**-0.5 + 2.0
    fit = fit_power_law(x, y, irreducible=True)
    assert fit.c == pytest.approx(2.0, rel=1e-3) and fit.b == pytest.approx(0.5, rel=1e-3)
    assert fit.predict(1e6) == pytest.approx(30 * 1e6**-0.5 + 2.0, rel=1e-3)


def test_huber_resists_an_outlier() -> None:
    x = np.geomspace(1, 100, 8)
    y = 50 * x**-0.45
    y[-1] *= 3.0  # one mis-evaluated run, at the end where it has the most leverage
    robust = fit_power_law(x, y)
    ols_slope = -np.polyfit(np.log(x), np.log(y), 1)[0]
    assert abs(robust.b - 0.45) < 0.03 and abs(ols_slope - 0.45) > 0.1


def test_frontier_matches_hand_made_envelope() -> None:
    curves = pd.DataFrame({
        "run_id": ["A"] * 3 + ["B"] * 3 + ["C"] * 3 + ["D"],
        "flops": [1, 2, 4, 2, 4, 8, 4, 8, 16, 16],
        "fid": [10, 8, 7, 9, 5, 4, 6, 4.5, 3, 3],  # D ties C's last point: adds nothing
    })
    front = frontier(curves, "flops", "fid")
    assert list(zip(front["flops"], front["fid"])) == [(1, 10), (2, 8), (4, 5), (8, 4), (16, 3)]
    assert front["run_id"].tolist() == ["A", "A", "B", "B", "C"]
    fx, fy = frontier_arrays(curves["flops"], curves["fid"])
    assert fx.tolist() == [1, 2, 4, 8, 16] and fy.tolist() == [10, 8, 5, 4, 3]


def test_frontier_bootstrap_resamples_runs() -> None:
    # Three sizes, learning curves y = 100·(C)^−0.3 floor-limited per size: the frontier follows
    # the envelope, and the bootstrap unit is the run (its whole curve).
    rows = []
    for k, size in enumerate([1.0, 4.0, 16.0]):
        for seed in range(2):
            c = size * np.geomspace(10, 1000, 8)
            y = np.maximum(100 * c**-0.3, 40 * size**-0.5) * (1 + 0.01 * seed)
            rows += [{"run_id": f"{k}-{seed}", "c": ci, "y": yi} for ci, yi in zip(c, y)]
    table = pd.DataFrame(rows)
    boot = bootstrap_power_law(table["c"], table["y"], table["run_id"], n_resamples=100, seed=0,
                               reduce=frontier_arrays)
    assert boot.n_runs == 6
    assert boot.fit.n == len(frontier(table, "c", "y"))
    assert boot.ci["b"][0] <= boot.fit.b <= boot.ci["b"][1]


def test_holdout_and_residuals() -> None:
    x = np.geomspace(1, 100, 6)
    y = 50 * x**-0.45
    held = holdout(np.repeat(x, 2), np.repeat(y, 2))  # both seeds of the largest size are held out
    assert held.held_x == [100.0, 100.0] and held.mean_abs_log_error < 1e-6
    res = residuals(fit_power_law(x, y), x, y)
    assert res.rmse < 1e-8 and len(res.residuals) == 6
    with pytest.raises(ValueError, match="cannot hold out"):
        holdout(x[:2], y[:2])


def test_errors_and_pearson() -> None:
    with pytest.raises(ValueError, match="distinct x"):
        fit_power_law([2.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1.0, 2.0], [0.0, 2.0])
    x = np.array([1.0, 10.0, 100.0])
    assert log_pearson(x, 5 / x) == pytest.approx(-1.0)
    assert np.isnan(log_pearson(x[:2], x[:2]))


def test_results_serialise_to_json() -> None:
    x, y, runs = synthetic_study()
    boot = bootstrap_power_law(x, y, runs, n_resamples=20)
    blob = json.loads(json.dumps({"boot": boot.to_dict(), "held": holdout(x, y).to_dict(),
                                  "res": residuals(boot.fit, x, y).to_dict()}))
    assert blob["boot"]["fit"]["c"] == 0.0 and blob["boot"]["resampled_unit"] == "run"
    assert set(blob["boot"]["ci"]) == {"a", "b", "c"} and "samples" not in blob["boot"]
    short = fit_power_law([1.0, 2.0], [3.0, 2.0]).to_dict()
    assert short["r"] is None  # NaN → null


def test_two_runs_give_no_interval_not_a_zero_width_one() -> None:
    """Issue 22: two runs made every resample draw the same line, printed as
    "b = 0.3219 [95% CI 0.3219 to 0.3219]"; the interval is now reported missing with the reason."""
    boot = bootstrap_power_law(np.array([1.0, 4.0]), np.array([100.0, 64.0]), np.array(["a", "b"]), n_resamples=50)
    assert math.isnan(boot.ci["b"][0]) and "distinct x" in boot.ci_missing["b"]
    assert "no 95% CI" in ci_text(boot.ci["b"], boot.ci_missing.get("b"), boot.level, str)
    x = np.repeat([1.0, 2, 4, 8, 16], 2)
    y = 100 * x ** -0.3 * np.exp(np.random.default_rng(0).normal(0, 0.05, x.size))
    normal = bootstrap_power_law(x, y, np.arange(x.size), n_resamples=50)
    assert not normal.ci_missing and normal.ci["b"][0] < normal.ci["b"][1]
