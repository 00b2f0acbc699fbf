"""Scaling-law fits: y = a·x^(−b) [+ c], robust in log space, with bootstrap CIs over runs.

Method (Hoffmann et al. 2022, Approach 3, reduced to one variable):

* residuals are taken in log space, log y − log ŷ, with ŷ = exp(α − b·log x) or, with the
  irreducible term, ŷ = exp(logaddexp(α − b·log x, e)) so that a = e^α > 0 and c = e^e ≥ 0
  hold without bounds;
* the loss is Huber (``scipy.optimize.least_squares(loss="huber")``) with δ = ``huber_delta``
  in log units: the default 0.1 keeps typical scatter (a few %–10 %) quadratic and turns a
  diverging or mis-evaluated point into a linear, bounded pull;
* the pure power law is a linear model in log space, so its Huber problem is convex and one
  start (the OLS line) suffices; with ``c`` the problem is not convex and a grid of starts
  is tried, the lowest cost wins;
* CIs are percentile intervals of a case bootstrap that resamples **runs** (a run's learning
  curve stays together), refitting each resample. Resamples whose fit is undefined (fewer
  than two distinct x) are dropped and counted.

Everything returned is a small dataclass with ``to_dict()`` giving JSON-ready values.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats
from tqdm import tqdm

DEFAULT_HUBER_DELTA = 0.1
DEFAULT_RESAMPLES = 1000
PARAMS = ("a", "b", "c")

Reducer = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class PowerLawFit:
    """y ≈ a·x^(−b) + c, fitted on ``n`` points; ``r`` is Pearson's r of (log x, log y)."""

    a: float
    b: float
    c: float
    irreducible: bool
    n: int
    r: float
    rmse_log: float
    huber_delta: float

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        """ŷ at ``x``."""
        return self.a * np.power(np.asarray(x, dtype=float), -self.b) + self.c

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (NaN → None)."""
        return to_jsonable(dataclasses.asdict(self))


@dataclass
class BootstrapFit:
    """A fit with percentile CIs from resampling runs. ``samples`` (one row of a, b, c per
    successful resample) stays out of ``to_dict()``; ``band()`` uses it."""

    fit: PowerLawFit
    ci: dict[str, tuple[float, float]]
    level: float
    n_resamples: int
    n_failed: int
    seed: int
    n_runs: int
    samples: np.ndarray = field(repr=False)
    ci_missing: dict[str, str] = field(default_factory=dict)  # parameter -> why its CI is not given

    def band(self, x: np.ndarray, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise percentile band of the fitted curve at ``x``."""
        level = self.level if level is None else level
        x = np.asarray(x, dtype=float)
        curves = self.samples[:, :1] * np.power(x[None, :], -self.samples[:, 1:2]) + self.samples[:, 2:3]
        tail = 100 * (1 - level) / 2
        return np.percentile(curves, tail, axis=0), np.percentile(curves, 100 - tail, axis=0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields: the fit, the CIs, the bootstrap settings."""
        out = {"fit": self.fit.to_dict(), "ci": {k: list(v) for k, v in self.ci.items()}}
        if self.ci_missing:  # only then: a fit whose intervals all stand reads as before
            out["ci_missing"] = self.ci_missing
        out.update(level=self.level, n_resamples=self.n_resamples, n_failed=self.n_failed,
                   seed=self.seed, resampled_unit="run", n_runs=self.n_runs)
        return to_jsonable(out)


@dataclass
class Residuals:
    """Log-space residuals log y − log ŷ of a fit, with summary statistics."""

    x: list[float]
    residuals: list[float]
    rmse: float
    max_abs: float
    shapiro_p: float  # normality of the residuals (NaN below 3 points)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return to_jsonable(dataclasses.asdict(self))


@dataclass
class Holdout:
    """Fit without the largest-x points, then predict them (the extrapolation test)."""

    fit: PowerLawFit
    held_x: list[float]
    held_y: list[float]
    predicted: list[float]
    relative_error: list[float]  # ŷ / y − 1
    mean_abs_log_error: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return to_jsonable(dataclasses.asdict(self))


def log_pearson(x: np.ndarray, y: np.ndarray, *, log_y: bool = True) -> float:
    """Pearson's r between log x and log y (``log_y=False``: y itself, the semi-log r of a
    "metric vs log GFLOPs" plot). NaN with fewer than 3 points or constant input."""
    lx = np.log(np.asarray(x, float))
    ly = np.log(np.asarray(y, float)) if log_y else np.asarray(y, float)
    if len(lx) < 3 or np.ptp(lx) == 0 or np.ptp(ly) == 0:
        return math.nan
    return float(stats.pearsonr(lx, ly).statistic)


def fit_power_law(
    x: np.ndarray, y: np.ndarray, *, irreducible: bool = False, huber_delta: float = DEFAULT_HUBER_DELTA,
) -> PowerLawFit:
    """Fit y = a·x^(−b) (+ c when ``irreducible``) by a robust Huber loss in log space.

    ``x`` and ``y`` must be positive and hold at least two distinct x (three with ``c``).
    """
    lx, ly = _logs(x, y)
    needed = 3 if irreducible else 2
    if len(np.unique(lx)) < needed:
        raise ValueError(f"a power-law fit needs at least {needed} distinct x values, got {len(np.unique(lx))}")
    starts = [_ols_start(lx, ly, irreducible)] + (_grid_starts(lx, ly) if irreducible else [])
    theta = _solve(lx, ly, starts, huber_delta)
    return _make_fit(theta, lx, ly, irreducible, huber_delta)


def bootstrap_power_law(
    x: np.ndarray, y: np.ndarray, runs: np.ndarray, *, irreducible: bool = False,
    n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = 0.95,
    huber_delta: float = DEFAULT_HUBER_DELTA, reduce: Reducer | None = None,
) -> BootstrapFit:
    """Fit, then bootstrap it by resampling runs with replacement.

    ``runs`` labels each point with its run; every resample draws as many runs as there are,
    pools their points, applies ``reduce`` (e.g. ``frontier_arrays``) and refits. Resample fits
    start from the full-sample optimum (and the OLS line): a resample's optimum lies near it,
    and this keeps 1,000 refits within seconds.
    """
    x, y, runs = np.asarray(x, float), np.asarray(y, float), np.asarray(runs)
    reduce = reduce or (lambda a, b: (a, b))
    full = fit_power_law(*reduce(x, y), irreducible=irreducible, huber_delta=huber_delta)
    theta_full = _theta(full)
    labels, inverse = np.unique(runs, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(labels))]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(labels), size=(n_resamples, len(labels)))
    needed = 3 if irreducible else 2
    samples = []
    # A bar on a terminal only (disable=None): 1,000 refits of a large study take a while.
    for draw in tqdm(draws, desc="bootstrap", unit="fit", leave=False, disable=None):
        index = np.concatenate([members[k] for k in draw])
        lx, ly = _logs(*reduce(x[index], y[index]))
        if len(np.unique(lx)) < needed:
            continue
        starts = [theta_full] + ([_ols_start(lx, ly, True)] if irreducible else [])
        theta = _solve(lx, ly, starts, huber_delta)
        samples.append(_params(theta, irreducible))
    samples_arr = np.array(samples).reshape(-1, 3)
    tail = 100 * (1 - level) / 2
    ci = {}
    for k, name in enumerate(PARAMS):
        if len(samples_arr):
            ci[name] = (float(np.percentile(samples_arr[:, k], tail)), float(np.percentile(samples_arr[:, k], 100 - tail)))
        else:
            ci[name] = (math.nan, math.nan)
    fitted = {name: ci[name] for name in PARAMS[:needed]}  # c is fixed at 0 without the irreducible term
    missing = degenerate_intervals(fitted, len(np.unique(reduce(x, y)[0])), needed, len(samples_arr))
    ci.update({name: (math.nan, math.nan) for name in missing})
    return BootstrapFit(full, ci, level, n_resamples, n_resamples - len(samples_arr), seed, len(labels),
                        samples_arr, missing)


def degenerate_intervals(ci: dict[str, tuple[float, float]], n_distinct: int, n_params: int,
                         n_samples: int) -> dict[str, str]:
    """The intervals the data cannot support, each with the reason: no resample could be fitted,
    as few distinct x as the law has parameters (every resample draws the same exact curve), or
    a zero-width interval."""
    reasons = {}
    for name, (low, high) in ci.items():
        if n_samples == 0:
            reasons[name] = "no bootstrap resample could be fitted"
        elif n_distinct <= n_params:
            reasons[name] = f"{n_distinct} distinct x values for {n_params} parameters: the curve passes through every point"
        elif not high - low > 1e-9 * max(1.0, abs(low), abs(high)):
            reasons[name] = "zero-width interval: every resample gave the same value"
    return reasons


def ci_text(ci: tuple[float, float], missing: str | None, level: float, number: Callable[[float], str]) -> str:
    """"95% CI low to high", or "no CI: <why>" for an interval the data cannot support."""
    if missing:
        return f"no {round(level * 100)}% CI: {missing}"
    return f"{round(level * 100)}% CI {number(ci[0])} to {number(ci[1])}"


def frontier_arrays(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lower envelope of (x, y) points: those with a lower y than every point at smaller or
    equal x (the compute-efficient frontier when x is training compute). Sorted by x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    on = _frontier_mask(x, y)
    order = np.argsort(x[on], kind="stable")
    return x[on][order], y[on][order]


def frontier(table: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The rows of ``table`` on the lower envelope of ``y`` over ``x`` (see ``frontier_arrays``)."""
    rows = table.dropna(subset=[x, y])
    on = _frontier_mask(rows[x].to_numpy(float), rows[y].to_numpy(float))
    return rows[on].sort_values(x, kind="stable").reset_index(drop=True)


def _frontier_mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which points are on the envelope, in input order (finite input)."""
    order = np.lexsort((y, x))  # by x, ties by y: the best point at a given x comes first
    ys = y[order]
    best_before = np.concatenate([[np.inf], np.minimum.accumulate(ys)[:-1]])
    mask = np.zeros(len(x), dtype=bool)
    mask[order] = ys < best_before  # strict: an equal later point adds nothing
    return mask


def residuals(fit: PowerLawFit, x: np.ndarray, y: np.ndarray) -> Residuals:
    """Log-space residuals of ``fit`` on (x, y) and their summary."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    res = np.log(y) - np.log(fit.predict(x))
    shapiro_p = float(stats.shapiro(res).pvalue) if len(res) >= 3 and np.ptp(res) > 0 else math.nan
    return Residuals(x.tolist(), res.tolist(), float(np.sqrt(np.mean(res**2))), float(np.max(np.abs(res))), shapiro_p)


def holdout(
    x: np.ndarray, y: np.ndarray, *, n_holdout: int = 1, irreducible: bool = False,
    huber_delta: float = DEFAULT_HUBER_DELTA,
) -> Holdout:
    """Fit without the points at the ``n_holdout`` largest distinct x values (all seeds of the
    largest sizes), and report how well the fit extrapolates to them."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    distinct = np.unique(x)
    if n_holdout < 1 or len(distinct) - n_holdout < (3 if irreducible else 2):
        raise ValueError(f"cannot hold out {n_holdout} of {len(distinct)} distinct x values and still fit")
    held = x >= distinct[-n_holdout]
    fit = fit_power_law(x[~held], y[~held], irreducible=irreducible, huber_delta=huber_delta)
    predicted = fit.predict(x[held])
    log_err = np.log(predicted) - np.log(y[held])
    return Holdout(fit, x[held].tolist(), y[held].tolist(), predicted.tolist(),
                   (predicted / y[held] - 1).tolist(), float(np.mean(np.abs(log_err))))


# --- internals -----------------------------------------------------------------------------

def _logs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("power-law fits need positive x and y")
    return np.log(x), np.log(y)


def _model(theta: np.ndarray, lx: np.ndarray) -> np.ndarray:
    """log ŷ for θ = (α, b) or (α, b, e)."""
    power = theta[0] - theta[1] * lx
    return power if len(theta) == 2 else np.logaddexp(power, theta[2])


def _ols_start(lx: np.ndarray, ly: np.ndarray, irreducible: bool) -> np.ndarray:
    """The OLS line in log space (with a negligible c when the model has one)."""
    slope, intercept = np.polyfit(lx, ly, 1)
    start = [intercept, -slope]
    return np.array(start + [ly.min() - 10.0] if irreducible else start)


def _grid_starts(lx: np.ndarray, ly: np.ndarray) -> list[np.ndarray]:
    """Starts for the non-convex fit with c: b on a grid, c a share of the smallest y."""
    starts = []
    for b in (0.1, 0.3, 0.5, 1.0, 2.0):
        for share in (0.1, 0.5, 0.9):
            e = ly.min() + math.log(share)
            # α puts the power-law part through the mean of what c leaves over.
            rest = np.log(np.clip(np.exp(ly) - math.exp(e), 1e-12, None))
            starts.append(np.array([float(np.mean(rest + b * lx)), b, e]))
    return starts


def _solve(lx: np.ndarray, ly: np.ndarray, starts: Sequence[np.ndarray], huber_delta: float) -> np.ndarray:
    """The lowest-cost Huber least-squares solution over the starting points."""
    best = None
    for start in starts:
        result = optimize.least_squares(
            lambda theta: _model(theta, lx) - ly, start, jac=lambda theta: _jacobian(theta, lx),
            loss="huber", f_scale=huber_delta, method="trf",
        )
        if best is None or result.cost < best.cost:
            best = result
    return best.x


def _jacobian(theta: np.ndarray, lx: np.ndarray) -> np.ndarray:
    """d log ŷ / dθ, analytic: finite differences would triple the bootstrap's cost."""
    if len(theta) == 2:
        return np.column_stack([np.ones_like(lx), -lx])
    power = theta[0] - theta[1] * lx
    share = np.exp(power - np.logaddexp(power, theta[2]))  # the power law's share of ŷ
    return np.column_stack([share, -lx * share, 1 - share])


def _params(theta: np.ndarray, irreducible: bool) -> tuple[float, float, float]:
    c = math.exp(theta[2]) if irreducible else 0.0
    return math.exp(theta[0]), float(theta[1]), c


def _theta(fit: PowerLawFit) -> np.ndarray:
    base = [math.log(fit.a), fit.b]
    return np.array(base + [math.log(fit.c)] if fit.irreducible else base)


def _make_fit(theta: np.ndarray, lx: np.ndarray, ly: np.ndarray, irreducible: bool, huber_delta: float) -> PowerLawFit:
    a, b, c = _params(theta, irreducible)
    rmse = float(np.sqrt(np.mean((_model(theta, lx) - ly) ** 2)))
    r = float(stats.pearsonr(lx, ly).statistic) if len(lx) >= 3 and np.ptp(ly) > 0 else math.nan
    return PowerLawFit(a, b, c, irreducible, len(lx), r, rmse, huber_delta)


def to_jsonable(value: Any) -> Any:
    """Plain JSON values: NaN/inf → None, numpy scalars → Python, tuples → lists."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
