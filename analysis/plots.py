"""The look of every gatscale figure, and the figure builders the CLIs compose.

One style: seaborn's whitegrid with the colour-blind-safe "colorblind" palette, log axes where
the field uses them (DiT's FID vs GFLOPs, Kaplan/Chinchilla's metric vs compute, μP's metric vs
log LR), units in the axis labels, sizes named as in the paper (S/B/L/XL by width) or in words
("width 32, patch 2"), numbers with one typographic minus sign, 150 dpi PNGs with a tight layout. Runs excluded from a fit (diverged, failed, unfinished) are always drawn,
hollow, with one marker per state (``STATUS_MARKERS``); a run without any metric value sits on
the top edge of its panel.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import ticker
from scipy import stats

from analysis.fit import BootstrapFit, ci_text
from contract.metric_names import metric_label

DPI = 150
SIZE_NAMES = {384: "S", 768: "B", 1024: "L", 1152: "XL"}  # DiT/GAT widths
AXIS_LABELS = {
    "gflops": "GFLOPs (G forward, DiT convention)",
    "params": "G parameters",
    "train_flops": "training FLOPs (G+D, penalties included)",
    "step": "training step",
    "images_seen": "images seen",
    "train.base_lr": "base learning rate",
}
X_SYMBOLS = {"gflops": "GFLOPs", "params": "N", "train_flops": "C"}  # the x of a fitted law
EXCLUDED = {"marker": "X", "s": 70, "facecolor": "white", "edgecolor": "black", "linewidths": 1.2, "zorder": 5}
STATUS_MARKERS = {"diverged": "X", "collapsed": "v", "failed": "P", "running": "o", "pending": "s", "unknown": "o"}


def apply_style() -> None:
    """Set the house style (call once before drawing)."""
    sns.set_theme(style="whitegrid", palette="colorblind", context="notebook")
    plt.rcParams.update({
        "savefig.dpi": DPI, "savefig.bbox": "tight", "figure.dpi": 100,
        "axes.titlesize": "medium", "legend.fontsize": "small", "legend.frameon": True,
    })


def axis_label(column: str) -> str:
    """The labelled unit of a column (metrics by their display name)."""
    return AXIS_LABELS.get(column) or metric_label(column)


def size_label(width: float | None, patch: float | None = None, model: str | None = None) -> str:
    """A legend name: the paper's "S/2" for a DiT width (S/B/L/XL, ``/patch`` when known), else
    "width 32, patch 2" (or "width 32"). Without a width, ``model`` (a published table's "S/4")."""
    if width is None or pd.isna(width):
        return str(model) if model is not None and not pd.isna(model) else "?"
    width = int(width)
    has_patch = patch is not None and not pd.isna(patch)
    if width in SIZE_NAMES:
        return f"{SIZE_NAMES[width]}/{int(patch)}" if has_patch else SIZE_NAMES[width]
    return f"width {width}, patch {int(patch)}" if has_patch else f"width {width}"


def with_size_labels(table: pd.DataFrame) -> pd.DataFrame:
    """A copy with a ``size`` column: the legend name of each row's size (see ``size_label``)."""
    out = table.copy()
    width = out["model.width"] if "model.width" in out else out.get("width", pd.Series(np.nan, index=out.index))
    patch = out["model.patch"] if "model.patch" in out else out.get("patch", pd.Series(np.nan, index=out.index))
    model = out["model"] if "model" in out else pd.Series(None, index=out.index)
    out["size"] = [size_label(w, p, m) for w, p, m in zip(width, patch, model)]
    return out


def size_palette(table: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
    """One colour per size, in order of increasing cost (GFLOPs, else width, else name)."""
    keys = [c for c in ("gflops", "model.width", "width") if c in table and table[c].notna().any()]
    order = (table.groupby("size")[keys[0]].median().sort_values().index.tolist() if keys
             else sorted(table["size"].unique()))
    colours = sns.color_palette("colorblind", n_colors=max(len(order), 1))
    return {size: colours[i % len(colours)] for i, size in enumerate(order)}


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write a PNG (tight, 150 dpi) and close the figure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def draw_fit(ax: plt.Axes, fit: BootstrapFit, x_range: tuple[float, float], label: str) -> None:
    """The fitted curve over ``x_range`` (log-spaced) with its bootstrap band."""
    grid = np.geomspace(*x_range, 200)
    ax.plot(grid, fit.fit.predict(grid), color="black", lw=1.5, ls="--", label=label, zorder=4)
    if len(fit.samples):
        low, high = fit.band(grid)
        ax.fill_between(grid, low, high, color="black", alpha=0.12, lw=0,
                        label=f"{int(round(fit.level * 100))}% bootstrap band", zorder=1)


def draw_excluded(ax: plt.Axes, rows: pd.DataFrame, x: str, y: str) -> None:
    """Excluded runs: at their last value, or on the panel's top edge when they have none.
    A run without a positive x (failed at step 0 on a compute axis) has no place on a log axis."""
    if ax.get_xscale() == "log":
        rows = rows[rows[x] > 0]
    if rows.empty:
        return
    for state, group in rows.groupby(rows["status"].fillna("unknown")):
        marker = STATUS_MARKERS.get(state, "X")
        style = {**EXCLUDED, "marker": marker}
        valued = group[group[y].notna()]
        label = f"{state} (excluded from fit)"
        if not valued.empty:
            ax.scatter(valued[x], valued[y], label=label, gid="excluded", **style)
            label = None
        missing = group[group[y].isna() & group[x].notna()]
        if not missing.empty:
            # x in data units, y in axes units: the top edge, whatever the metric range.
            ax.scatter(missing[x], np.full(len(missing), 0.97), transform=ax.get_xaxis_transform(),
                       clip_on=False, label=label or "_nolegend_", gid="excluded", **style)
            ax.annotate("no eval", (missing[x].iloc[0], 0.97), xycoords=ax.get_xaxis_transform(),
                        xytext=(6, -3), textcoords="offset points", fontsize="x-small")


def metric_vs_size(final: pd.DataFrame, excluded: pd.DataFrame, x: str, metric: str,
                   fit: BootstrapFit, r_text: str) -> plt.Figure:
    """DiT-style: the final metric of each run vs its size (log-log), fit line and band, the
    law with its exponent's CI and ``r_text`` in the title."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    _log_axes(ax, x, metric)
    palette = size_palette(pd.concat([final, excluded]))
    sns.scatterplot(data=final, x=x, y=metric, hue="size", hue_order=[s for s in palette if s in set(final["size"])],
                    palette=palette, s=60, ax=ax, zorder=3, edgecolor="black", linewidth=0.4)
    lo, hi = final[x].min(), final[x].max()
    draw_fit(ax, fit, (lo / 1.3, hi * 1.3), "power-law fit")
    ax.set_title(f"{law_text(fit, metric, x)}\n{r_text}")
    draw_excluded(ax, excluded, x, metric)
    _finish(fig, legend=ax)
    return fig


def metric_vs_compute(curves: pd.DataFrame, excluded: pd.DataFrame, front: pd.DataFrame, metric: str,
                      fit: BootstrapFit | None) -> plt.Figure:
    """Learning curves over training compute coloured by size, and the frontier with its fit
    (``front`` empty and ``fit`` None: neither is drawn)."""
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    _log_axes(ax, "train_flops", metric)
    palette = size_palette(pd.concat([curves, excluded]))
    for (size, _), run in curves.groupby(["size", "run_id"], sort=False):
        ax.plot(run["train_flops"], run[metric], color=palette[size], lw=1.0, alpha=0.8)
    for size, colour in palette.items():
        ax.plot([], [], color=colour, label=size)  # one legend entry per size, not per run
    for _, run in excluded.groupby("run_id", sort=False):
        ax.plot(run["train_flops"], run[metric], color="grey", lw=0.8, ls=":", alpha=0.8)
    draw_excluded(ax, excluded.groupby("run_id", sort=False).tail(1), "train_flops", metric)
    if not front.empty:
        ax.scatter(front["train_flops"], front[metric], color="black", s=14, zorder=4, label="frontier")
    if fit is not None:
        draw_fit(ax, fit, (front["train_flops"].min(), front["train_flops"].max() * 1.5), "frontier fit")
        ax.set_title(f"frontier: {law_text(fit, metric, 'train_flops')}")
    _finish(fig, legend=ax)
    return fig


def learning_curves(curves: pd.DataFrame, excluded: pd.DataFrame, metric: str, x: str = "step") -> plt.Figure:
    """The metric over training, one panel per size, one line per run (seeds overlaid)."""
    palette = size_palette(pd.concat([curves, excluded]))
    sizes = list(palette)
    ncols = min(len(sizes), 3)
    nrows = int(np.ceil(len(sizes) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), sharey=True, squeeze=False)
    for k, (ax, size) in enumerate(zip(axes.flat, sizes)):
        ax.set_yscale("log")
        _plain_ticks(ax.yaxis)
        for _, run in curves[curves["size"] == size].groupby("run_id", sort=False):
            ax.plot(run[x], run[metric], color=palette[size], lw=1.2, marker=".", ms=3)
        gone = excluded[excluded["size"] == size]
        for _, run in gone.groupby("run_id", sort=False):
            ax.plot(run[x], run[metric], color="grey", lw=0.8, ls=":")
        draw_excluded(ax, gone.groupby("run_id", sort=False).tail(1), x, metric)
        ax.set_title(size)
        ax.set_xlabel(axis_label(x))
        if k % ncols == 0:
            ax.set_ylabel(axis_label(metric))
    for ax in axes.flat[len(sizes):]:
        ax.set_visible(False)
    _finish(fig)
    return fig


def residual_panels(x: Sequence[float], residuals: Sequence[float], x_column: str) -> plt.Figure:
    """Log-space residuals vs x, and their normal QQ plot."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 3.4))
    left.axhline(0, color="black", lw=0.8)
    left.scatter(x, residuals, s=30, edgecolor="black", linewidth=0.4)
    left.set_xscale("log")
    left.set_xlabel(axis_label(x_column))
    left.set_ylabel("log residual (log y − log ŷ)")
    stats.probplot(residuals, dist="norm", plot=right)
    right.set_title("normal QQ of residuals")
    _finish(fig)
    return fig


def number(value: float | None, digits: int = 3, minus: str = "−") -> str:
    """``value`` to ``digits`` decimals with at most one sign, the typographic minus by default
    (``minus="-"`` for terminals); "n/a" where there is no value (None, NaN: r from 2 points)."""
    if value is None or not math.isfinite(value):
        return "n/a"
    text = f"{value:.{digits}f}"
    if float(text) == 0:
        text = text.lstrip("-")  # no "−0.000"
    return text.replace("-", minus)


def law_text(fit: BootstrapFit, metric: str, x: str) -> str:
    """The fitted law with each sign stated once: "FD ∝ GFLOPs^(−b), b = −0.034 (95% CI −0.106
    to −0.002)"; with the irreducible term "FD = a·GFLOPs^(−b) + c, b = …, c = 12.3"."""
    low, high = fit.ci["b"]
    name, x_name = metric_name(metric), X_SYMBOLS.get(x, x)
    law = f"{name} = a·{x_name}^(−b) + c" if fit.fit.irreducible else f"{name} ∝ {x_name}^(−b)"
    text = (f"{law}, b = {number(fit.fit.b)} "
            f"({ci_text((low, high), fit.ci_missing.get('b'), fit.level, number)})")
    return text + (f", c = {fit.fit.c:.3g}" if fit.fit.irreducible else "")


def metric_name(metric: str) -> str:
    """A metric's display name without its unit note ("FD", "FID-50k")."""
    return axis_label(metric).split(" (")[0]


def _log_axes(ax: plt.Axes, x: str, metric: str) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_ticks(ax.yaxis)
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(metric))


def _plain_ticks(axis: plt.Axes) -> None:
    """'4', '20' instead of '4×10⁰', '2×10¹' on a log metric axis; minor ticks are labelled
    when the axis spans few decades (a metric axis rarely spans more than two)."""
    axis.set_major_formatter(ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    axis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _finish(fig: plt.Figure, legend: plt.Axes | None = None) -> None:
    """Tight layout, then the legend outside the axes on the right (data never hides behind
    it). The legend comes after the layout so that it does not squeeze the axes; the saved
    PNG's tight bounding box takes it in."""
    fig.tight_layout()
    if legend is not None:
        legend.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def lr_transfer_panels(grid: pd.DataFrame, optima: pd.DataFrame, metric: str) -> plt.Figure:
    """Tensor Programs V Fig. 1 style: metric vs base LR (log x), one curve per width, the
    minimum of each curve starred, one panel per LR rule side by side (shared y).

    ``grid`` has one row per (rule, width, LR) with ``metric`` (the mean over seeds);
    ``optima`` one row per (rule, width) with ``best_lr`` and ``best_metric``.
    """
    rules = sorted(grid["train.lr_rule"].unique())
    widths = sorted(grid["model.width"].unique())
    colours = dict(zip(widths, sns.color_palette("colorblind", n_colors=len(widths))))
    fig, axes = plt.subplots(1, len(rules), figsize=(4.6 * len(rules), 3.8), sharey=True, squeeze=False)
    for ax, rule in zip(axes.flat, rules):
        for width in widths:
            curve = grid[(grid["train.lr_rule"] == rule) & (grid["model.width"] == width)].sort_values("train.base_lr")
            if curve.empty:
                continue
            ax.plot(curve["train.base_lr"], curve[metric], marker="o", ms=4, color=colours[width],
                    label=size_label(width))
            best = optima[(optima["train.lr_rule"] == rule) & (optima["model.width"] == width)]
            ax.scatter(best["best_lr"], best["best_metric"], marker="*", s=180, color=colours[width],
                       edgecolor="black", linewidth=0.6, zorder=5)
        ax.set_xscale("log", base=2)  # μP's convention: log2 LR, metric on a linear axis
        ax.set_title(f"LR rule: {rule}")
        ax.set_xlabel(axis_label("train.base_lr"))
    axes.flat[0].set_ylabel(axis_label(metric))
    axes.flat[-1].scatter([], [], marker="*", s=120, color="grey", edgecolor="black", label="minimum")
    _finish(fig, legend=axes.flat[-1])
    return fig


def divergence_heatmaps(grid: pd.DataFrame) -> plt.Figure:
    """Fraction of seeds diverged on the width × base-LR grid, one heatmap per LR rule."""
    rules = sorted(grid["train.lr_rule"].unique())
    fig, axes = plt.subplots(1, len(rules), figsize=(4.6 * len(rules), 3.6), squeeze=False)
    for ax, rule in zip(axes.flat, rules):
        cells = grid[grid["train.lr_rule"] == rule].pivot(index="model.width", columns="train.base_lr",
                                                           values="frac_diverged")
        cells.index = [int(w) for w in cells.index]  # the axis label says "width"
        cells.columns = [f"{lr:.2g}" for lr in cells.columns]
        sns.heatmap(cells, ax=ax, vmin=0, vmax=1, cmap="mako_r", annot=True, fmt=".2g", cbar=ax is axes.flat[-1],
                    cbar_kws={"label": "fraction of seeds diverged"}, linewidths=0.5, linecolor="white")
        ax.tick_params(axis="x", labelrotation=45)
        ax.set_title(f"LR rule: {rule}")
        ax.set_xlabel(axis_label("train.base_lr"))
        ax.set_ylabel("width")
    _finish(fig)
    return fig


def isoflop_profiles(profiles: Sequence, metric: str) -> plt.Figure:
    """Chinchilla Fig. 3 left: final metric against G GFLOPs, one curve per training budget,
    the fitted log-log parabola dashed and its minimum starred (hollow when it lies outside the
    sizes trained). ``profiles`` are `analysis.compute_optimal.Profile`s."""
    colours = sns.color_palette("viridis", n_colors=max(len(profiles), 1))
    fig, ax = plt.subplots(figsize=(5.6, 3.9))
    for colour, p in zip(colours, profiles):
        ax.scatter(p.n, p.fd, color=colour, s=22, label=f"{p.budget:.2g} FLOPs")
        grid = np.geomspace(min(p.n), max(p.n), 100)
        ax.plot(grid, np.exp(np.polyval(p.coef, np.log(grid))), color=colour, ls="--", lw=1)
        if p.n_opt is not None:
            at = float(np.exp(np.polyval(p.coef, np.log(p.n_opt))))
            ax.scatter([p.n_opt], [at], marker="*", s=160, color="white" if p.edge else colour,
                       edgecolor="black", linewidth=0.6, zorder=5)
    ax.scatter([], [], marker="*", s=120, color="grey", edgecolor="black", label="minimum (hollow: outside the sizes)")
    _log_axes(ax, "g_gflops", metric)
    ax.set_xlabel("G GFLOPs per image (N)")
    _finish(fig, legend=ax)
    return fig


def n_opt_against_compute(estimates, budget: float, level: float) -> plt.Figure:
    """N_opt against training FLOPs out to ``budget``: the isoFLOP minima and envelope points
    measured, each estimator's line, the parametric law's bootstrap band (``level``)."""
    fig, ax = plt.subplots(figsize=(5.6, 3.9))
    low = min([p.budget for p in estimates.profiles] + [c for c, _ in (estimates.envelope.pairs if estimates.envelope else [])]
              or [budget / 10])
    grid = np.geomspace(low, max(budget, low * 10), 100)
    palette = dict(zip(("envelope", "isoflop", "parametric"), sns.color_palette("colorblind", 3)))
    if estimates.envelope is not None:
        c, n = zip(*estimates.envelope.pairs)
        ax.scatter(c, n, s=8, color=palette["envelope"], alpha=0.5)
        ax.plot(grid, [estimates.envelope.at(x) for x in grid], color=palette["envelope"], label="envelope")
    minima = [(p.budget, p.n_opt) for p in estimates.profiles if p.n_opt is not None and not p.edge]
    if minima:
        ax.scatter(*zip(*minima), marker="*", s=120, color=palette["isoflop"], edgecolor="black", zorder=5)
    if estimates.isoflop is not None:
        ax.plot(grid, [estimates.isoflop.at(x) for x in grid], color=palette["isoflop"], label="isoFLOP minima")
    law = estimates.law
    ax.plot(grid, law.n_opt(grid, estimates.kappa), color=palette["parametric"], label="parametric law")
    draws = np.array([s.n_opt(grid, estimates.kappa) for s in estimates.samples])
    if len(draws) >= 10:
        tail = 100 * (1 - level) / 2
        ax.fill_between(grid, np.nanpercentile(draws, tail, axis=0), np.nanpercentile(draws, 100 - tail, axis=0),
                        color=palette["parametric"], alpha=0.15, lw=0, label=f"law's {level:.0%} bootstrap band")
    ax.axvline(budget, color="black", lw=0.8, ls=":", label="target budget")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(axis_label("train_flops"))
    ax.set_ylabel("compute-optimal G GFLOPs (N_opt)")
    _finish(fig, legend=ax)
    return fig


def predicted_against_measured(rows: pd.DataFrame, metric: str) -> plt.Figure:
    """Validation runs: measured final metric against the forecast's mean, with its PI as an
    error bar, and the identity line."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.errorbar(rows["predicted_mean"], rows["measured"],
                xerr=[rows["predicted_mean"] - rows["pi_low"], rows["pi_high"] - rows["predicted_mean"]],
                fmt="o", color="black", ecolor="grey", capsize=3, ms=5, label="run (PI as bar)")
    span = [min(rows["pi_low"].min(), rows["measured"].min()), max(rows["pi_high"].max(), rows["measured"].max())]
    ax.plot(span, span, color="grey", ls="--", lw=1, label="measured = predicted")
    ax.set_xlabel(f"predicted {metric_name(metric)}")
    ax.set_ylabel(f"measured {metric_name(metric)}")
    _finish(fig, legend=ax)
    return fig
