"""Compute-optimal laws from an isoFLOP ladder: Hoffmann et al.'s (2022) three approaches, with a
bootstrap over runs and a prediction interval for a new run. Torch-free; `analysis.forecast` is
the command line around it.

Every evaluation checkpoint is a point (N, D, C, FD): N the generator's forward GFLOPs per image,
D the images seen, C the training FLOPs so far (as `contract.flops` counts them). C = κ·N·D with κ
(training FLOPs per image per G GFLOP, G and D together) read off the table: D's size follows
G's, so κ is one number for a ladder (its spread is reported). Each run's earliest `DROP_EARLY`
fraction of evaluations is dropped: they are still in the first FD fall, which no law of N and D
describes.

* envelope (approach 1): the lowest FD at each C over every run's interpolated learning curve,
  the N achieving it, and log N_opt linear in log C;
* isoFLOP profiles (approach 2): for each budget, log of the final FD against log N as a
  parabola, its vertex N_opt(C); log N_opt linear in log C;
* the parametric law (approach 3) FD = E + A/N^α + B/D^β, fitted by a Huber loss on log FD in
  the log-sum-exp form from a grid of starts (L-BFGS-B, tight tolerances: scipy's defaults stop
  early, the flaw Besiroglu et al. 2024 found in the original fit).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from analysis.load import AnalysisError

DROP_EARLY = 0.1
HUBER_DELTA = 1e-3
BUDGET_TOLERANCE = 0.05  # runs whose final C agree this closely share a budget
LAW_PARAMS = ("E", "A", "alpha", "B", "beta")
EXPONENT_BOUNDS = (0.0, 3.0)
_EXPONENT_STARTS = (0.1, 0.5, 1.0)
_LOG_SCALE_STARTS = (-2.0, 0.0, 2.0)
_ENVELOPE_GRID = 40


@dataclass
class Law:
    """FD(N, D) = E + A/N^α + B/D^β (N in G GFLOPs, D in images). `on_edge` names the exponents
    that ended on a bound of the fit (the data did not pin them)."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    loss: float
    on_edge: list[str] = field(default_factory=list)

    def predict(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        """FD at sizes `n` after `d` images."""
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    def n_opt(self, flops: float | np.ndarray, kappa: float) -> np.ndarray:
        """The N minimising FD at training FLOPs C = κ·N·D (dFD/dN = 0 along D = C/(κN))."""
        if self.alpha <= 0 or self.beta <= 0 or self.A <= 0 or self.B <= 0:
            return np.full(np.shape(flops), np.nan)
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        return g * np.power(np.asarray(flops, float) / kappa, self.beta / (self.alpha + self.beta))

    def to_dict(self) -> dict[str, float]:
        """The five parameters."""
        return {name: getattr(self, name) for name in LAW_PARAMS}


def measured_runs(table: pd.DataFrame) -> pd.DataFrame:
    """The runs whose evaluations are results: completed, and collapsed (the collapse is the
    result; dropping those runs would bias the ladder towards the sizes that did not collapse)."""
    if "status" not in table:
        return table
    return table[table["status"].astype(str).isin(("completed", "collapsed"))]


def points(table: pd.DataFrame, metric: str, drop_early: float = DROP_EARLY) -> pd.DataFrame:
    """(run_id, seed, N, D, C, FD, final) of every evaluation, less each run's earliest
    `drop_early` fraction (at least one kept per run); `final` marks each run's last one."""
    rows = table.dropna(subset=[metric, "g_gflops", "images_seen", "train_flops"])
    rows = rows[(rows["images_seen"] > 0) & (rows[metric] > 0)].sort_values(["run_id", "images_seen"])
    rank = rows.groupby("run_id").cumcount()
    count = rows.groupby("run_id")["images_seen"].transform("size")
    kept = rows[rank >= np.floor(drop_early * count).clip(upper=count - 1)]
    out = pd.DataFrame({"run_id": kept["run_id"].astype(str).to_numpy(),
                        "seed": kept["seed"].to_numpy() if "seed" in kept else 0,
                        "N": kept["g_gflops"].to_numpy(float), "D": kept["images_seen"].to_numpy(float),
                        "C": kept["train_flops"].to_numpy(float), "FD": kept[metric].to_numpy(float)})
    out["final"] = ~out["run_id"].duplicated(keep="last")
    out["budget"] = out["run_id"].map(run_budgets(out))
    return out


def run_budgets(pts: pd.DataFrame) -> dict[str, float]:
    """Each run's budget: runs whose final C lie within `BUDGET_TOLERANCE` of each other (in
    sorted order) share one, their geometric mean."""
    final = pts.groupby("run_id")["C"].max().sort_values()
    groups: list[list[str]] = []
    last = None
    for run, c in final.items():
        if last is None or c > last * (1 + BUDGET_TOLERANCE):
            groups.append([])
        groups[-1].append(run)
        last = c
    return {run: float(np.exp(np.log(final[g]).mean())) for g in groups for run in g}


def kappa(pts: pd.DataFrame) -> float:
    """Training FLOPs per image per G GFLOP (median over points)."""
    return float(np.median(pts["C"] / (pts["N"] * pts["D"])))


def fit_law(n: np.ndarray, d: np.ndarray, fd: np.ndarray, starts: list[np.ndarray] | None = None) -> Law:
    """The law from the start grid (or from `starts`: the bootstrap passes the full fit's optimum)."""
    n0, d0 = np.exp(np.mean(np.log(n))), np.exp(np.mean(np.log(d)))
    ln, ld, ly = np.log(n / n0), np.log(d / d0), np.log(fd)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, alpha, b, beta, e = theta
        terms = np.stack([a - alpha * ln, b - beta * ld, np.full_like(ln, e)])
        pred = special.logsumexp(terms, axis=0)
        r = pred - ly
        loss = np.where(np.abs(r) < HUBER_DELTA, 0.5 * r**2, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA))
        slope = np.clip(r, -HUBER_DELTA, HUBER_DELTA)  # the Huber loss's derivative in r
        weight = np.exp(terms - pred) * slope  # d pred / d term is the softmax of the terms
        grad = [weight[0].sum(), -(weight[0] * ln).sum(), weight[1].sum(), -(weight[1] * ld).sum(), weight[2].sum()]
        return float(loss.sum()), np.array(grad)

    if starts is None:
        top = np.log(np.min(fd))
        starts = [np.array([top + a, alpha, top + b, beta, top + e])
                  for a, alpha, b, beta, e in itertools.product(
                      _LOG_SCALE_STARTS, _EXPONENT_STARTS, _LOG_SCALE_STARTS, _EXPONENT_STARTS, (-1.0, -0.3))]
    bounds = [(None, None), EXPONENT_BOUNDS, (None, None), EXPONENT_BOUNDS, (None, None)]
    options = {"ftol": 1e-14, "gtol": 1e-10, "maxiter": 2000}
    best = min((optimize.minimize(objective, s, jac=True, method="L-BFGS-B", bounds=bounds, options=options) for s in starts),
               key=lambda res: res.fun)
    a, alpha, b, beta, e = best.x
    edge = [name for name, v in (("alpha", alpha), ("beta", beta))
            if min(abs(v - bound) for bound in EXPONENT_BOUNDS) < 1e-3]
    # back to unscaled units: A/(N/n0)^α = (A·n0^α)/N^α
    return Law(float(np.exp(e)), float(np.exp(a) * n0**alpha), float(alpha),
               float(np.exp(b) * d0**beta), float(beta), float(best.fun), edge)


def _theta(law: Law, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The fit's internal parameters of `law` for data scaled like (n, d)."""
    n0, d0 = np.exp(np.mean(np.log(n))), np.exp(np.mean(np.log(d)))
    return np.array([np.log(law.A / n0**law.alpha), law.alpha, np.log(law.B / d0**law.beta), law.beta, np.log(law.E)])


@dataclass
class PowerInC:
    """log N_opt = intercept + slope·log C, fitted to (C, N_opt) pairs."""

    slope: float
    intercept: float
    pairs: list[tuple[float, float]]

    def at(self, flops: float) -> float:
        """N_opt at `flops`."""
        return float(np.exp(self.intercept + self.slope * np.log(flops)))


def _power_in_c(pairs: list[tuple[float, float]]) -> PowerInC | None:
    if len({round(np.log(c), 6) for c, _ in pairs}) < 2:
        return None
    lc, ln = np.log([c for c, _ in pairs]), np.log([n for _, n in pairs])
    slope, intercept = np.polyfit(lc, ln, 1)
    return PowerInC(float(slope), float(intercept), pairs)


def envelope(pts: pd.DataFrame) -> PowerInC | None:
    """Approach 1: at each of a log grid of C, the N of the run whose learning curve (log-log
    interpolated between its evaluations) is lowest there; None without two C with an answer."""
    curves = [(g["N"].iloc[0], np.log(g["C"].to_numpy()), np.log(g["FD"].to_numpy()))
              for _, g in pts.sort_values("C").groupby("run_id") if len(g) >= 2]
    if not curves:
        return None
    low, high = min(c[1][0] for c in curves), max(c[1][-1] for c in curves)
    pairs = []
    for lc in np.linspace(low, high, _ENVELOPE_GRID):
        best = min(((np.interp(lc, c, f), n) for n, c, f in curves if c[0] <= lc <= c[-1]), default=None)
        if best is not None:
            pairs.append((float(np.exp(lc)), float(best[1])))
    return _power_in_c(pairs)


@dataclass
class Profile:
    """One budget's isoFLOP profile: final FD against N, the parabola in log-log and its vertex
    (`n_opt`, None without curvature); `edge` when the vertex lies outside the sizes trained."""

    budget: float
    n: list[float]
    fd: list[float]
    coef: list[float] | None
    n_opt: float | None
    edge: bool


def isoflop_profiles(pts: pd.DataFrame) -> list[Profile]:
    """Approach 2's profiles, one per budget with at least three sizes."""
    final = pts[pts["final"]]
    out = []
    for budget, group in final.groupby("budget"):
        n, fd = group["N"].to_numpy(), group["FD"].to_numpy()
        if len(np.unique(n)) < 3:
            continue
        coef = np.polyfit(np.log(n), np.log(fd), 2)
        vertex = -coef[1] / (2 * coef[0]) if coef[0] > 0 else None
        edge = vertex is None or not np.log(n.min()) <= vertex <= np.log(n.max())
        out.append(Profile(float(budget), n.tolist(), fd.tolist(), coef.tolist(),
                           None if vertex is None else float(np.exp(vertex)), bool(edge)))
    return out


def ladder_points(table: pd.DataFrame, metric: str, drop_early: float = DROP_EARLY) -> pd.DataFrame:
    """`points` of an isoFLOP ladder's measured runs; an `AnalysisError` naming what is missing
    when they cannot make one (no evaluations, one size, one budget, no budget at three sizes)."""
    pts = points(table, metric, drop_early)
    if pts.empty:
        raise AnalysisError(f"no evaluation checkpoints with {metric}, g_gflops, images_seen and train_flops "
                            "among the completed runs: nothing to fit")
    budgets = sorted(pts["budget"].unique())
    sizes = sorted(pts["N"].unique())
    if len(sizes) < 2:
        raise AnalysisError(f"the study has one size (G {sizes[0]:.4g} GFLOPs): a law of size needs several")
    if len(budgets) < 2:
        raise AnalysisError(f"the study has one budget ({budgets[0]:.3g} FLOPs): an isoFLOP ladder needs several")
    if not isoflop_profiles(pts):
        raise AnalysisError(f"no budget was trained at three or more sizes (runs sharing a budget: their final "
                            f"training FLOPs within {BUDGET_TOLERANCE:.0%}): not an isoFLOP ladder; plan one with "
                            "a grid's budgets: section (sweeps/configs/isoflop_cpu.yaml)")
    return pts


def isoflop_law(profiles: list[Profile]) -> PowerInC | None:
    """N_opt(C) through the profiles' interior minima; None with fewer than two."""
    return _power_in_c([(p.budget, p.n_opt) for p in profiles if p.n_opt is not None and not p.edge])


@dataclass
class Estimates:
    """The full-data fits and their bootstrap over runs."""

    law: Law
    kappa: float
    envelope: PowerInC | None
    profiles: list[Profile]
    isoflop: PowerInC | None
    samples: list[Law]
    envelope_samples: list[PowerInC | None]
    isoflop_samples: list[PowerInC | None]
    log_sigma: float  # a new run's log-FD scatter about the law (seed-to-seed noise and misfit)
    seed_sigma: float | None  # seed-to-seed scatter alone, where two seeds of one cell exist

    def n_opt(self, flops: float) -> dict[str, float | None]:
        """Each estimator's N_opt at `flops` (None where it has no fit)."""
        return {"envelope": None if self.envelope is None else self.envelope.at(flops),
                "isoflop": None if self.isoflop is None else self.isoflop.at(flops),
                "parametric": float(self.law.n_opt(flops, self.kappa))}

    def n_opt_ci(self, flops: float, level: float) -> dict[str, tuple[float, float] | None]:
        """Percentile CIs of each estimator's N_opt at `flops` over the resamples."""
        draws = {"envelope": [s.at(flops) for s in self.envelope_samples if s is not None],
                 "isoflop": [s.at(flops) for s in self.isoflop_samples if s is not None],
                 "parametric": [float(s.n_opt(flops, self.kappa)) for s in self.samples]}
        return {name: percentile_ci(values, level) for name, values in draws.items()}

    def law_ci(self, level: float) -> dict[str, tuple[float, float] | None]:
        """Percentile CIs of the law's parameters."""
        return {name: percentile_ci([getattr(s, name) for s in self.samples], level) for name in LAW_PARAMS}

    def predict(self, n: float, d: float, level: float, seed: int = 0) -> tuple[float, tuple[float, float]]:
        """A new run's FD at (n, d): the law's value and a prediction interval that adds the
        scatter of one run (normal in log FD) to the spread of the resampled laws."""
        rng = np.random.default_rng(seed)
        means = np.log([max(float(s.predict(n, d)), 1e-300) for s in self.samples] or [float(self.law.predict(n, d))])
        draws = np.repeat(means, 20) + rng.normal(0.0, self.log_sigma, size=20 * len(means))
        low, high = percentile_ci(np.exp(draws), level)
        return float(self.law.predict(n, d)), (low, high)


def percentile_ci(values: list[float] | np.ndarray, level: float) -> tuple[float, float] | None:
    """The central `level` percentile interval of the finite values; None with fewer than 10, or
    when it has no width (every resample landed on one value: the data cannot support it)."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if len(values) < 10:
        return None
    tail = 100 * (1 - level) / 2
    low, high = float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))
    return None if high - low <= 1e-9 * max(abs(low), abs(high)) else (low, high)


def estimate(pts: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> Estimates:
    """All three estimators, refitted on `n_resamples` resamples of whole runs (a run's
    evaluations move together: they share its seed), each law started from the full optimum."""
    law = fit_law(pts["N"].to_numpy(), pts["D"].to_numpy(), pts["FD"].to_numpy())
    profiles = isoflop_profiles(pts)
    groups = [g for _, g in pts.groupby("run_id")]
    rng = np.random.default_rng(seed)
    samples, env_samples, iso_samples = [], [], []
    for draw in rng.integers(0, len(groups), size=(n_resamples, len(groups))):
        # a run drawn twice enters twice; its id is made unique so the per-run steps see two runs
        sample = pd.concat([groups[k].assign(run_id=f"{i}:{groups[k]['run_id'].iloc[0]}") for i, k in enumerate(draw)])
        n, d = sample["N"].to_numpy(), sample["D"].to_numpy()
        samples.append(fit_law(n, d, sample["FD"].to_numpy(), starts=[_theta(law, n, d)]))
        env_samples.append(envelope(sample))
        iso_samples.append(isoflop_law(isoflop_profiles(sample)))
    final = pts[pts["final"]]
    resid = np.log(final["FD"].to_numpy()) - np.log(law.predict(final["N"].to_numpy(), final["D"].to_numpy()))
    dof = max(len(resid) - len(LAW_PARAMS), 1)
    return Estimates(law, kappa(pts), envelope(pts), profiles, isoflop_law(profiles), samples, env_samples,
                     iso_samples, float(np.sqrt(np.sum(resid**2) / dof)), seed_scatter(final))


def seed_scatter(final: pd.DataFrame) -> float | None:
    """Pooled standard deviation of log final FD among runs of one (size, budget) cell."""
    logs = final.assign(logfd=np.log(final["FD"])).groupby(["N", "budget"])["logfd"]
    dev = logs.transform(lambda v: v - v.mean())
    dof = int((logs.transform("size") > 1).sum() - logs.ngroups + (logs.size() == 1).sum())
    return float(np.sqrt(np.sum(dev**2) / dof)) if dof > 0 else None


def backtest(pts: pd.DataFrame, n_resamples: int, level: float, seed: int = 0) -> pd.DataFrame:
    """Porian et al.'s rolling origin, plus a size hold-out: refit on the budgets up to each
    C_k and predict the final FD of every run at a larger budget; refit without the largest size
    and predict its runs. One row per predicted run: `step`, its size, budget, the prediction,
    its PI, the measurement, the absolute relative error and whether the PI covered it."""
    budgets = sorted(pts["budget"].unique())
    splits = [(f"fit budgets <= {c:.3g}", pts["budget"] <= c) for c in budgets[1:-1]]
    splits.append((f"hold out the largest size (G {pts['N'].max():.4g} GFLOPs)", pts["N"] < pts["N"].max()))
    rows = []
    for step, train in splits:
        if pts[train]["N"].nunique() < 2 or pts[train]["budget"].nunique() < 2:
            continue
        est = estimate(pts[train], n_resamples, seed)
        for _, run in pts[~train & pts["final"]].iterrows():
            mean, (low, high) = est.predict(run["N"], run["D"], level, seed)
            rows.append({"step": step, "run_id": run["run_id"], "g_gflops": run["N"], "budget": run["budget"],
                         "predicted": mean, "pi_low": low, "pi_high": high, "measured": run["FD"],
                         "are": abs(mean - run["FD"]) / run["FD"], "covered": bool(low <= run["FD"] <= high)})
    return pd.DataFrame(rows)


def backtest_summary(rows: pd.DataFrame) -> list[dict[str, float | int | str]]:
    """Per backtest step: runs predicted, mean ARE, PI coverage, the mean signed relative error
    (positive: predicted too high) and how many runs were predicted too high. A small ARE can
    hide a one-sided miss; the sign is what says the law's level is off at the ladder's edge."""
    if rows.empty:
        return []
    grouped = rows.groupby("step", sort=False)
    return [{"step": step, "runs": int(len(g)), "mean_are": float(g["are"].mean()),
             "coverage": float(g["covered"].mean()),
             "mean_bias": float(((g["predicted"] - g["measured"]) / g["measured"]).mean()),
             "over_predicted": int((g["predicted"] > g["measured"]).sum())} for step, g in grouped]


def one_sided_steps(summary: list[dict[str, Any]], alpha: float = 0.05) -> list[str]:
    """Warnings for the backtest steps whose runs were predicted too high (or too low) more often
    than chance allows: a two-sided sign test at ``alpha`` (9 of 10 one way: p = 0.02)."""
    warnings = []
    for row in summary:
        over, runs = int(row["over_predicted"]), int(row["runs"])
        p = stats.binomtest(over, runs, 0.5).pvalue
        if p < alpha:
            side, count = ("high", over) if 2 * over > runs else ("low", runs - over)
            warnings.append(f"backtest {row['step']}: {count} of {runs} runs predicted too {side} (mean signed "
                            f"error {row['mean_bias']:+.1%}, sign test p = {p:.2g}): the law's level is biased there")
    return warnings
