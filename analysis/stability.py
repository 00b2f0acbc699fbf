"""The width × base-LR stability map (issue 23), as a library: where training stops being
stable as the base LR grows, per LR rule and width, where the best FD lies, how both move with
width, and what happens when one width's best LR is used at another.

A run is *stable* when it completed; *unstable* when it diverged (a non-finite loss) or collapsed
(the trainer's FD rule, docs/collapse.md). Runs still running, failed or pending are no outcome
and are left out. Per (rule, width):

- ``min_unstable_lr``: the smallest base LR with an unstable run (the first failure going up);
  ``max_stable_lr``: the largest base LR below it whose finished runs were all stable. The
  *boundary* is their geometric midpoint and the bracket its interval. A stable LR above the
  first failure does not move the boundary: a run that never learns (FD bad from its first
  evaluation) is not flagged by the collapse rule, and the map's first run showed such runs
  "stable" at 4-8x the first failure; the note names them. A width with no unstable LR reports
  "boundary not crossed" and no boundary; none is invented.
- ``best_lr``/``best_fd``: the base LR with the lowest mean final metric over its runs that have
  one (completed or collapsed: a collapsed run's last FD is a data point; a diverged run has
  none), with bootstrap intervals (below).

The intervals and the log-log slopes against width come from one bootstrap: each resample
draws every (rule, width, LR) cell's runs with replacement (the seeds), recomputes the bracket
and the optimum, then places the boundary log-uniformly inside its bracket and the optimum
log-uniformly within half a grid step of the best LR (a 2×-spaced grid knows neither more
finely), and fits log LR = slope · log width + const (``analysis.fit.fit_power_law``). So
with one seed the intervals still carry the grid's resolution, and with several seeds also
their disagreement. A width enters a slope only where its quantity exists in the full data.

``stability_map`` computes everything; ``bracket_regex`` names the runs of further seeds at each
bracket for ``sweeps.launch --only``; ``write_report`` writes stability.csv, slopes.json,
lr_mismatch.csv/.md and the figures. ``python -m analysis.plot_stability`` is the command line.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from analysis import plots
from analysis.fit import degenerate_intervals, fit_power_law, to_jsonable
from analysis.load import AnalysisError
from analysis.lr_transfer import markdown
from analysis.traces import LR, RULE, WIDTH
from contract.lr_rules import learning_rate

UNSTABLE = ("diverged", "collapsed")
FINISHED = ("completed", *UNSTABLE)
KEYS = [RULE, WIDTH]
BASE_WIDTH = "train.base_width"
STABILITY_COLUMNS = [RULE, WIDTH, "max_stable_lr", "min_unstable_lr", "boundary_lr", "boundary_low",
                     "boundary_high", "best_lr", "best_lr_low", "best_lr_high", "best_fd", "best_fd_low",
                     "best_fd_high", "n_lrs", "n_runs", "n_unstable", "note"]


@dataclass
class Cell:
    """The finished runs of one (rule, width, base LR): unstable flags and final metric values
    (NaN for a run without one)."""

    lr: float
    unstable: np.ndarray
    values: np.ndarray


@dataclass
class StabilityMap:
    """What ``stability_map`` returns: the per-cell table, the per-(rule, width) table, the
    slopes (JSON-ready) and the LR-mismatch table."""

    cells: pd.DataFrame
    table: pd.DataFrame
    slopes: dict[str, Any]
    mismatch: pd.DataFrame
    metric: str
    runs: pd.DataFrame = field(repr=False)


def finished_runs(final: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per finished run (``FINISHED`` states) of a study's final rows: rule, width, base
    LR, base width, seed, status, ``unstable`` and the metric (NaN for a diverged run)."""
    missing = [c for c in (RULE, LR, WIDTH, "status", metric) if c not in final or final[c].isna().all()]
    if missing:
        raise AnalysisError(f"the runs lack {', '.join(missing)} (is this a width x base-LR study?)")
    runs = final[final["status"].astype(str).isin(FINISHED)].copy()
    if runs.empty:
        raise AnalysisError("no run has finished (completed, diverged or collapsed): nothing to map")
    runs["unstable"] = runs["status"].isin(UNSTABLE)
    runs[metric] = runs[metric].where(runs["status"] != "diverged")  # the last FD before a NaN loss is no result
    runs[WIDTH] = runs[WIDTH].astype(int)
    runs[LR] = runs[LR].astype(float)
    if BASE_WIDTH not in runs:
        runs[BASE_WIDTH] = np.nan
    return runs[[RULE, WIDTH, LR, BASE_WIDTH, "seed", "status", "unstable", metric]].reset_index(drop=True)


def _cells(runs: pd.DataFrame, metric: str) -> dict[tuple[str, int], list[Cell]]:
    """The runs grouped into cells, per (rule, width) in LR order."""
    out: dict[tuple[str, int], list[Cell]] = {}
    for (rule, width, lr), group in runs.groupby([RULE, WIDTH, LR]):
        out.setdefault((rule, int(width)), []).append(
            Cell(float(lr), group["unstable"].to_numpy(bool), group[metric].to_numpy(float)))
    return out


def _stable_lrs(cells: list[Cell]) -> list[float]:
    return [c.lr for c in cells if len(c.unstable) and not c.unstable.any()]


def _bracket(cells: list[Cell]) -> tuple[float, float]:
    """(max_stable_lr, min_unstable_lr) of one (rule, width): the first failure and the largest
    stable LR below it; NaN where there is none."""
    unstable = [c.lr for c in cells if c.unstable.any()]
    first_failure = min(unstable) if unstable else math.inf
    below = [lr for lr in _stable_lrs(cells) if lr < first_failure]
    return (max(below) if below else math.nan), (first_failure if unstable else math.nan)


def _best(cells: list[Cell]) -> tuple[float, float]:
    """(best_lr, best_fd): the LR with the lowest mean metric over the runs that have one."""
    means = [(np.nanmean(c.values), c.lr) for c in cells if np.isfinite(c.values).any()]
    if not means:
        return math.nan, math.nan
    fd, lr = min(means)
    return lr, float(fd)


def _half_step(cells: list[Cell], lr: float) -> tuple[float, float]:
    """The LRs halfway (geometrically) to ``lr``'s neighbours on the grid; at the grid's edge,
    the same ratio as the step on the inside (a grid of one LR: the LR itself)."""
    lrs = sorted(c.lr for c in cells)
    i = lrs.index(lr)
    down = math.sqrt(lrs[i - 1] / lr) if i > 0 else None
    up = math.sqrt(lrs[i + 1] / lr) if i + 1 < len(lrs) else None
    down, up = down or (1 / up if up else 1.0), up or (1 / down if down else 1.0)
    return lr * down, lr * up


def _note(cells: list[Cell], max_stable: float, min_unstable: float) -> str:
    """Why a (rule, width) has no boundary, or ""."""
    if math.isnan(min_unstable):
        return f"boundary not crossed: every base LR up to {max(c.lr for c in cells):.3g} stable"
    if math.isnan(max_stable):
        return f"boundary not crossed: every base LR from {min(c.lr for c in cells):.3g} unstable"
    above = [lr for lr in _stable_lrs(cells) if lr > min_unstable]
    return f"stable again above the first failure at {', '.join(f'{lr:.3g}' for lr in above)}" if above else ""


def _resample(cells: dict[tuple[str, int], list[Cell]], rng: np.random.Generator) -> dict[tuple[str, int], list[Cell]]:
    """Every cell's runs drawn with replacement (the seed bootstrap)."""
    out = {}
    for key, row in cells.items():
        drawn = []
        for c in row:
            pick = rng.integers(0, len(c.unstable), len(c.unstable))
            drawn.append(Cell(c.lr, c.unstable[pick], c.values[pick]))
        out[key] = drawn
    return out


def _draw(cells: list[Cell], rng: np.random.Generator) -> tuple[float, float, float]:
    """One bootstrap draw of (boundary, best LR, best FD) of one (rule, width)'s resampled cells:
    the boundary log-uniform inside the bracket, the optimum log-uniform within half a grid step."""
    max_stable, min_unstable = _bracket(cells)
    boundary = math.nan
    if not (math.isnan(max_stable) or math.isnan(min_unstable)):
        low, high = sorted((max_stable, min_unstable))
        boundary = math.exp(rng.uniform(math.log(low), math.log(high)))
    best_lr, best_fd = _best(cells)
    if not math.isnan(best_lr):
        low, high = _half_step(cells, best_lr)
        best_lr = math.exp(rng.uniform(math.log(low), math.log(high)))
    return boundary, best_lr, best_fd


def _slope(widths: np.ndarray, lrs: np.ndarray) -> tuple[float, float]:
    """(slope, prefactor) of lr = prefactor · width^slope, by ``analysis.fit.fit_power_law``
    (which fits y = a·x^(−b), so slope = −b); NaN below 2 distinct widths."""
    ok = np.isfinite(lrs)
    if len(np.unique(widths[ok])) < 2:
        return math.nan, math.nan
    fit = fit_power_law(widths[ok], lrs[ok])
    return -fit.b, fit.a


def _percentile(values: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` percentile interval of the finite values (NaN when none)."""
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def _slope_entry(widths: np.ndarray, point: np.ndarray, draws: np.ndarray, level: float,
                 what: str) -> dict[str, Any]:
    """slopes.json's entry for one quantity of one rule: the slope on the full data, its
    bootstrap interval (missing with the reason when the data cannot support one), the widths
    used and those left out."""
    slope, prefactor = _slope(widths, point)
    used = [int(w) for w, v in zip(widths, point) if np.isfinite(v)]
    entry: dict[str, Any] = {"slope": slope, "prefactor": prefactor, "ci": [math.nan, math.nan],
                             "widths": used, "widths_left_out": [int(w) for w in widths if int(w) not in used]}
    if math.isnan(slope):
        entry["ci_missing"] = entry["missing"] = f"{what} at {len(used)} width(s): a slope needs 2"
        return entry
    slopes = np.array([_slope(widths[np.isfinite(point)], d[np.isfinite(point)])[0] for d in draws])
    ci = _percentile(slopes, level)
    missing = degenerate_intervals({"slope": ci}, len(used), 2, int(np.isfinite(slopes).sum()))
    if missing:
        entry["ci_missing"] = missing["slope"]
    else:
        entry["ci"] = list(ci)
    return entry


def stability_table(cells: dict[tuple[str, int], list[Cell]], draws: dict[tuple[str, int], np.ndarray],
                    level: float) -> pd.DataFrame:
    """One row per (rule, width): the bracket, the boundary and its interval, the optimum and
    its intervals (``draws`` per key: one row of (boundary, best LR, best FD) per resample)."""
    rows = []
    for (rule, width), row in sorted(cells.items()):
        max_stable, min_unstable = _bracket(row)
        best_lr, best_fd = _best(row)
        d = draws[(rule, width)]
        crossed = not (math.isnan(max_stable) or math.isnan(min_unstable))
        n_runs = sum(len(c.unstable) for c in row)
        rows.append({
            RULE: rule, WIDTH: width, "max_stable_lr": max_stable, "min_unstable_lr": min_unstable,
            "boundary_lr": math.sqrt(max_stable * min_unstable) if crossed else math.nan,
            **dict(zip(("boundary_low", "boundary_high"),
                       sorted((max_stable, min_unstable)) if crossed else (math.nan, math.nan))),
            "best_lr": best_lr, **dict(zip(("best_lr_low", "best_lr_high"), _percentile(d[:, 1], level))),
            "best_fd": best_fd, **dict(zip(("best_fd_low", "best_fd_high"), _percentile(d[:, 2], level))),
            "n_lrs": len(row), "n_runs": n_runs, "n_unstable": int(sum(c.unstable.sum() for c in row)),
            "note": _note(row, max_stable, min_unstable),
        })
    return pd.DataFrame(rows, columns=STABILITY_COLUMNS)


def cell_summary(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (rule, width, base LR): runs, unstable / diverged / collapsed counts, the mean
    metric over the runs that have one, and the effective LR (what the rule gives at the width)."""
    grouped = runs.groupby([RULE, WIDTH, LR])
    summary = pd.DataFrame({
        "n_runs": grouped.size(),
        "n_unstable": grouped["unstable"].sum(),
        "n_diverged": grouped["status"].agg(lambda s: int((s == "diverged").sum())),
        "n_collapsed": grouped["status"].agg(lambda s: int((s == "collapsed").sum())),
        metric: grouped[metric].mean(),
        BASE_WIDTH: grouped[BASE_WIDTH].first(),
    }).reset_index()
    summary["effective_lr"] = [
        learning_rate(rule, int(w), lr, int(bw)) if np.isfinite(bw) else math.nan
        for rule, w, lr, bw in summary[[RULE, WIDTH, LR, BASE_WIDTH]].itertuples(index=False)]
    return summary


def mismatch_table(cells: pd.DataFrame, table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The LR-mismatch ablation per rule: the widest width at the narrowest width's best base
    LR, and the narrowest at the widest's. Each row: the width trained, whose LR it borrows, that
    base LR and its effective LR at this width, runs and unstable runs there, the mean metric,
    and the width's own best for comparison (``outcome`` "not run" when the grid lacks the cell)."""
    rows = []
    for rule, part in table.groupby(RULE):
        part = part.sort_values(WIDTH)
        narrow, wide = part.iloc[0], part.iloc[-1]
        if narrow[WIDTH] == wide[WIDTH]:
            continue
        for model, donor in ((wide, narrow), (narrow, wide)):
            lr = donor["best_lr"]
            at = cells[(cells[RULE] == rule) & (cells[WIDTH] == model[WIDTH]) & np.isclose(cells[LR], lr)]
            found = at.iloc[0] if len(at) else None
            rows.append({
                RULE: rule, WIDTH: int(model[WIDTH]), "lr_of_width": int(donor[WIDTH]), LR: lr,
                "effective_lr": found["effective_lr"] if found is not None else math.nan,
                "n_runs": int(found["n_runs"]) if found is not None else 0,
                "n_unstable": int(found["n_unstable"]) if found is not None else 0,
                metric: found[metric] if found is not None else math.nan,
                "own_best_lr": model["best_lr"], "own_best_fd": model["best_fd"],
                "outcome": ("not run" if found is None else "unstable" if found["n_unstable"] == found["n_runs"]
                            else f"{int(found['n_unstable'])} of {int(found['n_runs'])} unstable"
                            if found["n_unstable"] else "stable"),
            })
    return pd.DataFrame(rows)


def stability_map(final: pd.DataFrame, metric: str, *, n_resamples: int = 1000, seed: int = 0,
                  level: float = 0.95) -> StabilityMap:
    """The whole analysis of a study's final rows (``analysis.load.final_rows``); an
    ``AnalysisError`` when no run finished or the rule/width/LR columns are missing."""
    runs = finished_runs(final, metric)
    cells = _cells(runs, metric)
    rng = np.random.default_rng(seed)
    keys = sorted(cells)
    # draws[key][i] = (boundary, best LR, best FD) of resample i; one resample covers every key,
    # so a rule's slope is fitted on one consistent draw of all its widths.
    draws = {key: np.empty((n_resamples, 3)) for key in keys}
    for i in range(n_resamples):
        sample = _resample(cells, rng)
        for key in keys:
            draws[key][i] = _draw(sample[key], rng)
    table = stability_table(cells, draws, level)
    slopes: dict[str, Any] = {}
    for rule, part in table.groupby(RULE):
        widths = part[WIDTH].to_numpy(float)
        stacked = np.stack([draws[(rule, int(w))] for w in widths], axis=1)  # resample × width × quantity
        slopes[rule] = {
            "boundary": _slope_entry(widths, part["boundary_lr"].to_numpy(float), stacked[:, :, 0], level, "a boundary"),
            "optimum": _slope_entry(widths, part["best_lr"].to_numpy(float), stacked[:, :, 1], level, "an optimum"),
        }
    slopes = {"slopes": slopes, "level": level, "n_resamples": n_resamples, "seed": seed, "metric": metric,
              "method": "log LR = slope * log width + const; bootstrap over seeds within each (rule, width, LR), "
                        "boundary log-uniform in its bracket, optimum within half a grid step"}
    cell_table = cell_summary(runs, metric)
    return StabilityMap(cell_table, table, to_jsonable(slopes), mismatch_table(cell_table, table, metric), metric, runs)


def bracket_regex(table: pd.DataFrame) -> str:
    """A ``sweeps.launch --only`` pattern selecting the runs of seeds 1–9 at every (rule,
    width)'s ``max_stable_lr`` and ``min_unstable_lr``: the extra seeds near the boundary, chosen
    from the seed-0 map (run names carry ``w<width>-``, ``lr_<rule>-`` and ``blr<LR:g>-``)."""
    parts = [f"w{int(row[WIDTH])}-.*-lr_{re.escape(row[RULE])}-blr{re.escape(f'{lr:g}')}-s[1-9]-"
             for _, row in table.iterrows() for lr in (row["max_stable_lr"], row["min_unstable_lr"]) if np.isfinite(lr)]
    if not parts:
        raise AnalysisError("no (rule, width) has a stable or an unstable base LR: no boundary to add seeds at")
    return "^(" + "|".join(parts) + ")"


# --- figures --------------------------------------------------------------------------------

def plot_metric_vs_lr(result: StabilityMap) -> plt.Figure:
    """μTransfer's figure: the final metric against base LR (log), one curve per width (mean
    over the runs with a value), one panel per rule; collapsed runs drawn with their marker,
    diverged runs (no value) on the panel's top edge."""
    runs, cells, metric = result.runs, result.cells, result.metric
    rules = sorted(cells[RULE].unique())
    widths = sorted(cells[WIDTH].unique())
    colours = dict(zip(widths, sns.color_palette("viridis", n_colors=len(widths))))
    fig, axes = plt.subplots(1, len(rules), figsize=(4.8 * len(rules), 3.9), sharey=True, squeeze=False)
    top = np.nanmax(runs[metric]) * 1.05 if runs[metric].notna().any() else 1.0
    for ax, rule in zip(axes.flat, rules):
        for width in widths:
            curve = cells[(cells[RULE] == rule) & (cells[WIDTH] == width)].sort_values(LR)
            ax.plot(curve[LR], curve[metric], marker="o", ms=3, color=colours[width], label=str(width))
            part = runs[(runs[RULE] == rule) & (runs[WIDTH] == width)]
            for state in UNSTABLE:
                hit = part[part["status"] == state]
                ax.scatter(hit[LR], hit[metric].fillna(top), marker=plots.STATUS_MARKERS[state], s=55,
                           facecolor="none", edgecolor=colours[width], linewidth=1.2, zorder=4)
        ax.set_xscale("log", base=2)
        ax.set_title(f"LR rule: {rule}")
        ax.set_xlabel(plots.axis_label(LR))
    axes.flat[0].set_ylabel(plots.axis_label(metric))
    for state in UNSTABLE:
        axes.flat[-1].scatter([], [], marker=plots.STATUS_MARKERS[state], facecolor="none", edgecolor="grey",
                              label=state + (" (top edge)" if state == "diverged" else ""))
    axes.flat[-1].legend(title="width", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


def plot_boundary_and_optimum(result: StabilityMap) -> plt.Figure:
    """The boundary (bracket as error bar) and the optimum (bootstrap interval) against width,
    log-log, one panel per rule, each with its fitted line and slope CI in the legend."""
    table, slopes = result.table, result.slopes["slopes"]
    rules = sorted(table[RULE].unique())
    fig, axes = plt.subplots(1, len(rules), figsize=(4.8 * len(rules), 3.9), sharey=True, squeeze=False)
    palette = sns.color_palette("colorblind", n_colors=2)
    for ax, rule in zip(axes.flat, rules):
        part = table[table[RULE] == rule]
        for (name, column, low, high), colour, shift in zip(
                (("boundary", "boundary_lr", "boundary_low", "boundary_high"),
                 ("optimum", "best_lr", "best_lr_low", "best_lr_high")), palette, (0.97, 1.03)):
            ok = part[column].notna()
            x, y = part[WIDTH][ok] * shift, part[column][ok]  # side by side where the two coincide
            ax.errorbar(x, y, yerr=[y - part[low][ok], part[high][ok] - y], fmt="o", color=colour, capsize=3)
            fit = slopes[rule][name]
            if fit["slope"] is not None:
                xs = np.geomspace(part[WIDTH].min(), part[WIDTH].max(), 20)
                ci = "no CI" if fit.get("ci_missing") else f"CI {fit['ci'][0]:.2f} to {fit['ci'][1]:.2f}"
                ax.plot(xs, fit["prefactor"] * xs ** fit["slope"], color=colour, lw=1.2,
                        label=f"{name}: slope {fit['slope']:.2f} ({ci})")
            else:
                ax.plot([], [], color=colour, label=f"{name}: {fit.get('missing', 'no slope')}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"LR rule: {rule}")
        ax.set_xlabel("width")
        ax.legend(fontsize="x-small", loc="best")
    axes.flat[0].set_ylabel(plots.axis_label(LR))
    return fig


def write_report(result: StabilityMap, out: Path) -> str:
    """Write into ``out`` (created): stability.csv, stability_cells.csv, slopes.json,
    lr_mismatch.csv, lr_mismatch.md, fd_vs_lr.png and boundary_optimum.png. Returns a short
    text summary (stability.csv's main columns and the mismatch table, as markdown)."""
    out.mkdir(parents=True, exist_ok=True)
    plots.apply_style()
    plots.save_figure(plot_metric_vs_lr(result), out / "fd_vs_lr.png")
    plots.save_figure(plot_boundary_and_optimum(result), out / "boundary_optimum.png")
    result.table.to_csv(out / "stability.csv", index=False)
    result.cells.to_csv(out / "stability_cells.csv", index=False)
    (out / "slopes.json").write_text(json.dumps(result.slopes, indent=2) + "\n")
    result.mismatch.to_csv(out / "lr_mismatch.csv", index=False)
    mismatch = markdown(result.mismatch) if not result.mismatch.empty else "(one width per rule: no mismatch)\n"
    (out / "lr_mismatch.md").write_text(mismatch)
    main = [RULE, WIDTH, "max_stable_lr", "min_unstable_lr", "best_lr", "best_fd", "note"]
    return markdown(result.table[main]) + "\n" + mismatch
