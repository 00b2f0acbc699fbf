"""Scaling of a study, as a library: final metric vs size, the compute frontier, their power-law
fits with bootstrap CIs, and the report files.

``make_study`` turns a tidy table (``analysis.load``) into a ``Study``: the rows a ``--where``
keeps, the metric, and the split of final rows into runs fitted (completed or collapsed, with a
positive metric and size) and runs excluded with why. ``analyse`` fits, draws and writes the
report (``fit.json``, ``report.md``, the PNGs and the table). ``python -m analysis.plot_scaling``
and the scaling notebook call these.
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import fit as fitting
from analysis import plots
from analysis.load import AnalysisError, default_metric, final_rows, save_table, select_rows


@dataclass
class Study:
    """What the report is made of: the table, the final row per run, and the split."""

    table: pd.DataFrame
    metric: str
    x: str
    used: pd.DataFrame  # final rows that enter the fit
    excluded: pd.DataFrame  # final rows that do not, with a "why" column


def split_runs(final: pd.DataFrame, metric: str, x: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs fitted, runs excluded with a ``why``): a fit takes completed runs that have a
    positive metric and x; everything else is excluded, never dropped silently."""
    why = pd.Series([_why(row, metric, x) for row in final.to_dict(orient="records")], index=final.index)
    return final[why == ""], final[why != ""].assign(why=why[why != ""])


def _why(run: dict[str, Any], metric: str, x: str) -> str:
    """Why a run's final row cannot enter the fit ("" when it can)."""
    state = run.get("status") if isinstance(run.get("status"), str) else "unknown"
    if state == "diverged":
        step = run.get("diverged_step")
        return f"diverged at step {int(step)}" if pd.notna(step) else "diverged"
    if state == "failed":
        return f"failed: {run.get('reason')}"
    if state not in ("completed", "collapsed"):  # a collapsed run's last FD is its result
        return f"not finished (state {state})"
    for column in (metric, x):
        value = run[column]
        if pd.isna(value):
            return f"no {column} value"
        if not math.isfinite(value):
            return f"{column} = {value} is not finite"
        if value <= 0:
            return f"{column} = {value:g} is not positive (a power law needs > 0)"
    return ""


def exclusion_records(excluded: pd.DataFrame, metric: str) -> list[dict[str, Any]]:
    """fit.json's list of excluded runs."""
    columns = ["run_id", "status", "step", metric, "why"]
    records = excluded[[c for c in columns if c in excluded]].to_dict(orient="records")
    return fitting.to_jsonable(records)


def analyse(study: Study, out: Path, n_resamples: int, seed: int, irreducible: bool = False) -> dict[str, Any]:
    """Fit, plot and write the report files into ``out`` (which must exist): ``scaling_<x>.png``,
    ``residuals.png``, ``learning_curves.png``, ``compute.png``, ``fit.json``, ``results.csv``,
    ``results.parquet`` and ``report.md``; returns the content of fit.json."""
    check_fittable(study, irreducible)
    plots.apply_style()
    final_fit, result, figures = _fit_final(study, out, n_resamples, seed, irreducible)
    frontier_fit = _fit_frontier(study, out, n_resamples, seed, irreducible, result, figures)
    result["summary"] = summary(study, result, final_fit, frontier_fit)
    result = fitting.to_jsonable(result)  # NaN (e.g. r from 2 points) → null: fit.json stays JSON
    (out / "fit.json").write_text(json.dumps(result, indent=2, allow_nan=False))
    save_table(study.table, out / "results.csv")
    save_table(study.table, out / "results.parquet")
    (out / "report.md").write_text(report(study, result["summary"], figures, out))
    return result


def _fit_final(study: Study, out: Path, n_resamples: int, seed: int,
               irreducible: bool) -> tuple[fitting.BootstrapFit, dict[str, Any], dict[str, Path]]:
    """The final metric against size: its bootstrap fit, fit.json's content so far (the fit, r,
    residuals, hold-out and exclusions) and the figures ``scaling_<x>.png`` and ``residuals.png``."""
    used, excluded, metric, x = study.used, study.excluded, study.metric, study.x
    final_fit = fitting.bootstrap_power_law(used[x], used[metric], used["run_id"], n_resamples=n_resamples, seed=seed,
                                            irreducible=irreducible)
    result: dict[str, Any] = {
        "metric": metric, "x": x, "n_runs": int(study.table["run_id"].nunique()),
        "final": {**final_fit.to_dict(),
                  "r_semilog": fitting.log_pearson(used[x], used[metric], log_y=False),
                  "residuals": fitting.residuals(final_fit.fit, used[x], used[metric]).to_dict()},
        "excluded": exclusion_records(excluded, metric),
    }
    if used[x].nunique() >= (4 if irreducible else 3):
        result["final"]["holdout"] = fitting.holdout(used[x], used[metric], irreducible=irreducible).to_dict()
    r_text = f"r = {plots.number(final_fit.fit.r)} (log-log)"
    figures = {"scaling": plots.save_figure(plots.metric_vs_size(used, excluded, x, metric, final_fit, r_text),
                                            out / f"scaling_{x}.png")}
    resid = result["final"]["residuals"]
    figures["residuals"] = plots.save_figure(plots.residual_panels(resid["x"], resid["residuals"], x),
                                             out / "residuals.png")
    return final_fit, result, figures


def _fit_frontier(study: Study, out: Path, n_resamples: int, seed: int, irreducible: bool,
                  result: dict[str, Any], figures: dict[str, Path]) -> fitting.BootstrapFit | None:
    """The learning curves and the compute frontier: adds ``learning_curves.png`` and
    ``compute.png`` to ``figures`` and the frontier's fit (or why there is none) to ``result``;
    returns the frontier's fit."""
    metric = study.metric
    curves, gone = _curves(study)
    frontier_fit = None
    if curves["step"].notna().any():
        figures["learning_curves"] = plots.save_figure(plots.learning_curves(curves, gone, metric),
                                                       out / "learning_curves.png")
    if "train_flops" in curves and curves["train_flops"].notna().any():
        front = fitting.frontier(curves, "train_flops", metric)
        problem = frontier_problem(front, irreducible)
        if problem:
            result["frontier"] = {"skipped": problem}
            front = front.iloc[:0]
        else:
            frontier_fit = fitting.bootstrap_power_law(
                curves["train_flops"], curves[metric], curves["run_id"], n_resamples=n_resamples, seed=seed,
                reduce=fitting.frontier_arrays, irreducible=irreducible,
            )
            result["frontier"] = {**frontier_fit.to_dict(), "points": fitting.to_jsonable(
                front[["run_id", "step", "train_flops", metric]].to_dict(orient="records"))}
        figures["compute"] = plots.save_figure(plots.metric_vs_compute(curves, gone, front, metric, frontier_fit),
                                               out / "compute.png")
    return frontier_fit


def check_fittable(study: Study, irreducible: bool = False) -> None:
    """Refuse, before any folder is written, data that no power law can be fitted to."""
    used, metric, x = study.used, study.metric, study.x
    needed = 3 if irreducible else 2  # free parameters of the law
    if used[x].nunique() < needed:
        raise AnalysisError(
            f"need completed runs at {needed} or more distinct {x} values with a {metric} value to fit, "
            f"got {used[x].nunique()} ({len(study.excluded)} run(s) excluded)"
        )
    for column in (x, metric):
        # A log-log fit needs positive normal numbers: a subnormal like 1e-320 overflows its inverse.
        bad = used[~(pd.to_numeric(used[column], errors="coerce") >= sys.float_info.min)]
        if len(bad):
            row = bad.iloc[0]
            raise AnalysisError(f"{column}={row[column]} (run {row['run_id']}) is not a positive normal "
                                f"number: a log-log fit cannot use it")


def frontier_problem(front: pd.DataFrame, irreducible: bool = False) -> str:
    """Why the compute frontier ``front`` gets neither a drawing nor a fit ("" when it gets both)."""
    runs = front["run_id"].unique()
    if len(runs) == 1:
        return (f"all {len(front)} points of the compute frontier come from one run ({runs[0]}): that is "
                "one learning curve, not a frontier across sizes, so none is drawn or fitted")
    needed = 3 if irreducible else 2
    distinct = front["train_flops"].nunique()
    if distinct < needed:
        return f"the compute frontier has {distinct} distinct compute value(s) and a fit needs {needed}"
    return ""


def summary(study: Study, result: dict[str, Any], final_fit: fitting.BootstrapFit,
            frontier_fit: fitting.BootstrapFit | None) -> str:
    """The report's paragraph (also fit.json's ``summary``): the laws, r, the hold-out and the
    exclusions, every number with one sign."""
    name, x_name = plots.metric_name(study.metric), plots.X_SYMBOLS.get(study.x, study.x)
    f = final_fit.fit
    text = (
        f"Over {len(study.used)} completed runs, {plots.law_text(final_fit, study.metric, study.x)} "
        f"from {final_fit.n_resamples} bootstrap resamples of runs, a = {f.a:.4g}; Pearson r in log-log "
        f"space = {plots.number(f.r)} (semi-log r, {name} vs log {x_name}: "
        f"{plots.number(result['final']['r_semilog'])})."
    )
    if frontier_fit is not None:
        text += (f" On the compute-efficient frontier, {plots.law_text(frontier_fit, study.metric, 'train_flops')}, "
                 "C in training FLOPs.")
    elif "skipped" in result.get("frontier", {}):
        text += f" No compute-frontier fit: {result['frontier']['skipped']}."
    if "holdout" in result["final"]:
        held = result["final"]["holdout"]
        text += (f" Fitted without the largest size, the law predicts it within "
                 f"{100 * held['mean_abs_log_error']:.1f}% (mean |log error|).")
    if len(study.excluded):
        text += f" {len(study.excluded)} run(s) excluded from the fits (listed in fit.json, drawn with ✕)."
    return text


def report(study: Study, summary_text: str, figures: dict[str, Path], out: Path) -> str:
    """report.md: the summary paragraph, then the figures."""
    body = [f"# Scaling report: {plots.metric_name(study.metric)} vs {study.x}", "", summary_text, ""]
    body += [f"![{name}]({path.relative_to(out)})" for name, path in figures.items()]
    return "\n".join(body) + "\n"


def _curves(study: Study) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All eval rows of the fitted runs and of the excluded runs, with size labels."""
    table = plots.with_size_labels(study.table)
    fitted = table[table["run_id"].isin(study.used["run_id"]) & table[study.metric].notna()]
    gone = table[table["run_id"].isin(study.excluded["run_id"])]
    if gone.empty:
        return fitted, gone
    # A run with no metric value still has its last row: that is what gets drawn for it.
    gone = gone[gone[study.metric].notna() | ~gone["run_id"].duplicated(keep="last")]
    return fitted, gone


def make_study(table: pd.DataFrame, x: str = "gflops", metric: str | None = None,
               where: Sequence[str] = ()) -> Study:
    """The report's view of a tidy table: the rows matching every ``where`` condition, ``metric``
    (default: ``default_metric``) and ``x`` checked numeric, and the fitted/excluded split."""
    table = select_rows(table, list(where))
    metric = metric or default_metric(table)
    for column in (metric, x):
        if column not in table or table[column].isna().all():
            raise AnalysisError(f"no values of {column!r} in the results (columns: {', '.join(map(str, table.columns))})")
        numbers = pd.to_numeric(table[column], errors="coerce")
        bad = table[column][numbers.isna() & table[column].notna()]
        if len(bad):
            row = table.loc[bad.index[0]]
            raise AnalysisError(f"non-numeric {column} value {bad.iloc[0]!r} (run {row['run_id']}): {column} must be a number")
        table = table.assign(**{column: numbers})
    final = plots.with_size_labels(final_rows(table, metric))
    used, excluded = split_runs(final, metric, x)
    return Study(table, metric, x, used, excluded)
