"""Optimisation instability with width (paper §5.2), per LR rule, as a library, with the checks
that an LR rule makes training width-independent.

- ``output_change_by_width``: the relative output change of G and of D's logits per step, from
  each run's stats.jsonl (``analysis.traces.stats_traces``);
- ``divergence_summary``: rate and step of divergence on width × LR × rule;
- the coordinate check (μP style): ``load_coord_check`` reads ``python -m gat.coord_check``'s
  CSV, ``coord_table`` / ``coord_slopes`` summarise it;
- the LR predictions: ``rule_predictions`` turns the empirical optimum at one width into what
  each LR rule predicts at the others, for ``plot_lr_optima_overlay`` (``python -m sweeps.tune``
  writes the optima).

``instability_report`` makes a study's tables and every figure they allow, from its run folders
when they are on disk, else from the tables committed in ``STUDY_DIR/analysis/``; the
instability notebook shows it and ``python -m analysis.ablations`` writes it.
"""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from analysis import plots
from analysis.load import AnalysisError
from analysis.report import Report, open_report
from analysis.traces import LR, RULE, RUN_COLUMNS, WIDTH, runs, stats_traces
from contract.lr_rules import RULES, learning_rate

def output_change_by_width(traces: pd.DataFrame) -> pd.DataFrame:
    """Per (rule, width): the per-step relative output change of G and of D's logits, as the
    median over each run's eval ticks, then mean/min/max over runs (seeds, LRs)."""
    ticks = traces.dropna(subset=["g_output_change", "d_logit_change"], how="all")
    per_run = ticks.groupby(["run_id", RULE, WIDTH])[["g_output_change", "d_logit_change"]].median().reset_index()
    summary = per_run.groupby([RULE, WIDTH]).agg(
        g_output_change=("g_output_change", "mean"), g_min=("g_output_change", "min"), g_max=("g_output_change", "max"),
        d_logit_change=("d_logit_change", "mean"), d_min=("d_logit_change", "min"), d_max=("d_logit_change", "max"),
        n_runs=("run_id", "nunique"),
    )
    return summary.reset_index()


def plot_output_change(summary: pd.DataFrame) -> plt.Figure:
    """Relative change per step vs width (log-log), one line per LR rule: G's output and D's
    logits. A rule that holds the output speed fixed gives flat lines."""
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6), squeeze=False)
    rules = sorted(summary[RULE].unique())
    colours = dict(zip(rules, sns.color_palette("colorblind", n_colors=len(rules))))
    for ax, (column, low, high, title) in zip(axes.flat, (
        ("g_output_change", "g_min", "g_max", "G output ‖ΔG(z)‖/‖G(z)‖ per step"),
        ("d_logit_change", "d_min", "d_max", "D logits ‖ΔD(x)‖/‖D(x)‖ per step"),
    )):
        for rule in rules:
            part = summary[summary[RULE] == rule].sort_values(WIDTH)
            ax.plot(part[WIDTH], part[column], marker="o", color=colours[rule], label=rule)
            ax.fill_between(part[WIDTH], part[low], part[high], color=colours[rule], alpha=0.15, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width")
        ax.set_ylabel("relative change")
        ax.set_title(title)
    axes.flat[-1].legend(title="LR rule", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


def divergence_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (rule, width, base LR): runs, finished runs (completed, diverged or collapsed), the
    diverged and collapsed counts, fraction diverged among the finished, fraction unstable
    (diverged or collapsed) and the median step of divergence."""
    per_run = runs(table)
    per_run = per_run.assign(
        _finished=per_run["status"].isin(["completed", "diverged", "collapsed"]),
        _diverged=(per_run["status"] == "diverged").astype(float),
        _collapsed=(per_run["status"] == "collapsed").astype(float),
        _step=pd.to_numeric(per_run["diverged_step"].where(per_run["status"] == "diverged"), errors="coerce"),
    )
    grouped = per_run.groupby([RULE, WIDTH, LR])
    summary = pd.DataFrame({
        "n_runs": grouped.size(),
        "n_finished": grouped["_finished"].sum(),
        "n_diverged": grouped["_diverged"].sum(),
        "n_collapsed": grouped["_collapsed"].sum(),
        "median_diverged_step": grouped["_step"].median(),
    }).reset_index()
    finished = summary["n_finished"].where(summary["n_finished"] > 0)
    summary["frac_diverged"] = summary["n_diverged"] / finished
    summary["frac_unstable"] = (summary["n_diverged"] + summary["n_collapsed"]) / finished
    return summary


def plot_divergence(summary: pd.DataFrame) -> plt.Figure:
    """Fraction diverged (heatmaps per rule, ``plots.divergence_heatmaps``) is the rate; this
    draws the step of divergence vs width, one panel per rule, coloured by base LR."""
    diverged = summary[summary["n_diverged"] > 0]
    rules = sorted(summary[RULE].unique())
    fig, axes = plt.subplots(1, len(rules), figsize=(4.2 * len(rules), 3.4), squeeze=False, sharey=True)
    lrs = sorted(summary[LR].unique())
    colours = dict(zip(lrs, sns.color_palette("rocket_r", n_colors=len(lrs))))
    for ax, rule in zip(axes.flat, rules):
        part = diverged[diverged[RULE] == rule]
        for lr, group in part.groupby(LR):
            ax.scatter(group[WIDTH], group["median_diverged_step"], s=30 + 60 * group["frac_diverged"],
                       color=colours[lr], edgecolor="black", linewidth=0.4, label=f"{lr:.3g}")
        if part.empty:
            ax.text(0.5, 0.5, "no run diverged", transform=ax.transAxes, ha="center", va="center")
        ax.set_xscale("log", base=2)
        ax.set_title(f"LR rule: {rule}")
        ax.set_xlabel("width")
        ax.set_ylabel("step of divergence (median)")
        if not part.empty:
            ax.legend(title="base LR", fontsize="x-small")
    return fig


def plot_grad_norms(traces: pd.DataFrame) -> plt.Figure:
    """Pre-clip gradient norms of G (top) and D (bottom) over training, one panel per LR rule,
    one line per run coloured by width (log y)."""
    rules = sorted(traces[RULE].dropna().unique())
    widths = sorted(traces[WIDTH].dropna().unique())
    colours = dict(zip(widths, sns.color_palette("viridis", n_colors=len(widths))))
    fig, axes = plt.subplots(2, len(rules), figsize=(4.2 * len(rules), 5.6), squeeze=False, sharex=True)
    for col, rule in enumerate(rules):
        part = traces[traces[RULE] == rule]
        for row, column in enumerate(("grad_norm_g", "grad_norm_d")):
            ax = axes[row, col]
            for (_, width), run in part.groupby(["run_id", WIDTH]):
                ax.plot(run["step"], run[column], color=colours[width], lw=1.0, alpha=0.85)
            ax.set_yscale("log")
            ax.set_title(f"{rule}: {'G' if row == 0 else 'D'}")
            ax.set_xlabel(plots.axis_label("step"))
            ax.set_ylabel("grad norm (before clipping)")
    for width, colour in colours.items():
        axes[0, -1].plot([], [], color=colour, label=str(int(width)))
    axes[0, -1].legend(title="width", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


# --- coordinate check ----------------------------------------------------------------------

COORD_COLUMNS = ("net", "module", "width", "rule", "seed", "step", "rms")


def load_coord_check(path: str | Path) -> pd.DataFrame:
    """The CSV ``python -m gat.coord_check`` writes, plus ``kind``: the module with its block
    index removed (``blocks.attn``), which groups the per-block curves."""
    path = Path(path)
    if path.is_dir():
        path = path / "coord_check.csv"
    if not path.is_file():
        raise AnalysisError(f"{path}: no such file (run python -m gat.coord_check --out {path.parent})")
    frame = pd.read_csv(path)
    missing = [c for c in COORD_COLUMNS if c not in frame]
    if missing:
        raise AnalysisError(f"{path}: missing column(s) {', '.join(missing)}")
    frame["kind"] = frame["module"].map(lambda name: re.sub(r"\.\d+", "", name))
    return frame


def _final_step(coords: pd.DataFrame, step: int | None) -> pd.DataFrame:
    """The rows of ``coords`` at ``step`` (None: the last step logged)."""
    return coords[coords["step"] == (coords["step"].max() if step is None else step)]


def coord_table(coords: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """Activation RMS at ``step`` (default: the last), mean over seeds: rows (net, rule,
    module), one column per width."""
    at = _final_step(coords, step)
    return at.pivot_table(index=["net", "rule", "module"], columns="width", values="rms", aggfunc="mean")


def coord_slopes(coords: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """How activations grow with width at ``step``: least-squares slope of log2 RMS on log2
    width per (net, rule, module). 0 = width-independent (what a transferring rule gives);
    1 = doubling with every doubling of width."""
    at = _final_step(coords, step).groupby(["net", "rule", "module", "width"])["rms"].mean().reset_index()
    rows = []
    for (net, rule, module), group in at.groupby(["net", "rule", "module"]):
        slope = np.polyfit(np.log2(group["width"]), np.log2(group["rms"]), 1)[0] if len(group) >= 2 else np.nan
        rows.append({"net": net, "rule": rule, "module": module, "slope": slope})
    return pd.DataFrame(rows)


def plot_coord_check(coords: pd.DataFrame, step: int | None = None) -> plt.Figure:
    """microsoft/mup's coord-check plot: activation RMS vs width (log-log) at ``step``, one
    panel per (net, rule), one thin line per module coloured by module kind."""
    chosen = _final_step(coords, step)
    at = chosen.groupby(["net", "rule", "module", "kind", "width"])["rms"].mean().reset_index()
    nets, rules = sorted(at["net"].unique(), reverse=True), sorted(at["rule"].unique())  # G above D
    kinds = sorted(at["kind"].unique())
    colours = dict(zip(kinds, sns.color_palette("colorblind", n_colors=len(kinds))))
    fig, axes = plt.subplots(len(nets), len(rules), figsize=(3.8 * len(rules), 3.2 * len(nets)),
                             squeeze=False, sharey="row")
    for row, net in zip(axes, nets):
        for ax, rule in zip(row, rules):
            part = at[(at["net"] == net) & (at["rule"] == rule)]
            for (module, kind), curve in part.groupby(["module", "kind"]):
                ax.plot(curve["width"], curve["rms"], color=colours[kind], marker=".", lw=1.0, alpha=0.8)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{net}, LR rule {rule}")
    for ax in axes[-1]:
        ax.set_xlabel("width")  # on the bottom row only: a row's x label would sit on the next row's titles
    for ax in axes[:, 0]:
        ax.set_ylabel("activation RMS")
    for kind, colour in colours.items():
        axes[0, -1].plot([], [], color=colour, label=kind)
    axes[0, -1].legend(title="module", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.suptitle(f"activation RMS after {int(chosen['step'].max())} training step(s)", fontsize="medium")
    return fig


# --- LR predictions ------------------------------------------------------------------------

def rule_predictions(optima: pd.DataFrame, rules: tuple[str, ...] = RULES, anchor_width: int | None = None,
                     lr_column: str = "effective_lr") -> pd.DataFrame:
    """What each LR rule predicts for the optimal LR at every width of ``optima``, anchored at
    the empirical optimum at ``anchor_width`` (default the smallest width; the geometric mean
    when several searches cover it): lr(w) = ``contract.lr_rules.learning_rate(rule, w, lr*, w₀)``.

    ``optima`` needs ``model.width`` and ``lr_column`` (``python -m sweeps.tune`` writes
    ``best_lr.csv`` with both)."""
    for column in (WIDTH, lr_column):
        if column not in optima:
            raise AnalysisError(f"the optima table lacks {column!r} (columns: {', '.join(optima.columns)})")
    widths = sorted(optima[WIDTH].unique())
    anchor_width = anchor_width or widths[0]
    at_anchor = optima.loc[optima[WIDTH] == anchor_width, lr_column].astype(float)
    if at_anchor.empty:
        raise AnalysisError(f"no optimum at the anchor width {anchor_width}")
    anchor_lr = float(np.exp(np.log(at_anchor).mean()))
    grid = np.unique(np.geomspace(min(widths), max(widths), 50).tolist() + list(widths))
    return pd.DataFrame([{"rule": rule, WIDTH: w, "predicted_lr": learning_rate(rule, w, anchor_lr, anchor_width)}
                         for rule in rules for w in grid])


def plot_lr_optima_overlay(optima: pd.DataFrame, predictions: pd.DataFrame,
                           lr_column: str = "effective_lr") -> plt.Figure:
    """Empirical optimal LR per width (points; one marker per searched rule when ``optima``
    has ``train.lr_rule``) against each rule's prediction (lines), log-log."""
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    rules = list(dict.fromkeys(predictions["rule"]))
    colours = dict(zip(rules, sns.color_palette("colorblind", n_colors=len(rules))))
    for rule in rules:
        line = predictions[predictions["rule"] == rule]
        ax.plot(line[WIDTH], line["predicted_lr"], color=colours[rule], lw=1.4, label=f"{rule} prediction")
    searched = optima.groupby(RULE) if RULE in optima else [("search", optima)]
    for (name, group), marker in zip(searched, "o^sDv"):
        ax.scatter(group[WIDTH], group[lr_column], marker=marker, s=60, color="black", zorder=5,
                   label=f"empirical optimum ({name})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width")
    ax.set_ylabel("optimal learning rate (hidden matrices)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


# --- the report: what the notebook shows and the command line writes -----------------------

INSTABILITY_TABLES = ("output_change", "divergence", "grad_norm_traces")


def instability_report(study: str | Path, *, coord_check: str | Path | None = None) -> Report:
    """Instability with width (§5.2) of a study over widths and LR rules. Tables:
    ``output_change``, ``divergence``, ``grad_norm_traces`` (each run's logged pre-clip norms) and
    ``coord_slopes`` (from ``coord_check``, default ``<study>/coord_check/coord_check.csv``).
    Figures: ``output_change``, ``divergence_rate``, ``divergence_step``, ``grad_norms``,
    ``coord_check``."""
    report, table = open_report(study)
    if table is None:
        report.read_committed(INSTABILITY_TABLES)
    else:
        traces = stats_traces(table)
        report.add_table("output_change", output_change_by_width(traces),
                         "no eval tick logged g_output_change or d_logit_change")
        report.add_table("divergence", divergence_summary(table))
        norms = ["grad_norm_g", "grad_norm_d"]
        report.add_table("grad_norm_traces", traces[[*RUN_COLUMNS, "step", *norms]].dropna(subset=norms, how="all"),
                         "no stats line logged grad_norm_g or grad_norm_d")
    coord_path = Path(coord_check) if coord_check else report.study / "coord_check" / "coord_check.csv"
    if coord_path.is_file():
        coords = load_coord_check(coord_path)
        slopes = coord_slopes(coords).pivot_table(index=["net", "module"], columns="rule", values="slope")
        report.add_table("coord_slopes", slopes.reset_index().rename_axis(columns=None))
        report.figures["coord_check"] = plot_coord_check(coords)
    else:
        report.missing["coord_slopes"] = report.missing["coord_check"] = (
            f"no {coord_path}; make it with python -m gat.coord_check --widths 32 64 128 256 "
            f"--rules constant width_aware mup --steps 5 --out {coord_path.parent}")
    report.draw("output_change", "output_change", plot_output_change)
    report.draw("divergence_rate", "divergence", plots.divergence_heatmaps)
    report.draw("divergence_step", "divergence", plot_divergence)
    report.draw("grad_norms", "grad_norm_traces", plot_grad_norms)
    return report
