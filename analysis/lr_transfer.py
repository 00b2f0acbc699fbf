"""LR transfer of a width × base-LR study, as a library: the metric per grid cell, the optimum
per width and how far it drifts per doubling of width, and the report files.

``lr_transfer`` turns a study's final rows into the grid (``lr_grid``), the optima
(``lr_optima``) and the cells too thin to have one (``too_few_lrs``); ``write_report`` writes
``lr_transfer.png``, ``lr_divergence.png``, ``lr_grid.csv``, ``lr_optima.csv`` and
``lr_optima.md``. ``python -m analysis.plot_lr_transfer`` and the scaling notebook call these;
what each LR rule predicts for the optimum is ``analysis.instability.rule_predictions``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plots
from analysis.load import AnalysisError
from analysis.traces import LR, RULE, WIDTH

def lr_grid(final: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (rule, width, base LR): the metric's mean over completed seeds (NaN when
    none completed), seeds run, and the fraction that diverged."""
    runs = final.assign(
        _value=final[metric].where(final["status"] == "completed"),
        _diverged=(final["status"] == "diverged").astype(float),
    )
    grouped = runs.groupby([RULE, WIDTH, LR])
    return pd.DataFrame({
        metric: grouped["_value"].mean(),
        "n_seeds": grouped.size(),
        "n_completed": grouped["_value"].count(),
        "frac_diverged": grouped["_diverged"].mean(),
    }).reset_index()


def lr_optima(grid: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (rule, width) with a metric value at 2 or more base LRs (``too_few_lrs`` names the
    others): the best base LR on the grid, whether it sits on the grid's edge (then the true
    optimum may lie outside), and its drift per width doubling: log2(lr*₂/lr*₁) / log2(w₂/w₁)
    from the previous width, and ``slope`` over all widths of the rule (least squares of
    log2 lr* on log2 width)."""
    rows = []
    for (rule, width), curve in grid.dropna(subset=[metric]).groupby([RULE, WIDTH]):
        if curve[LR].nunique() < 2:
            continue  # the only LR tried is no optimum
        best = curve.loc[curve[metric].idxmin()]
        lrs = grid[(grid[RULE] == rule) & (grid[WIDTH] == width)][LR]
        rows.append({RULE: rule, WIDTH: width, "best_lr": best[LR], "best_metric": best[metric],
                     "at_grid_edge": bool(best[LR] in (lrs.min(), lrs.max()))})
    optima = pd.DataFrame(rows, columns=[RULE, WIDTH, "best_lr", "best_metric", "at_grid_edge"])
    log_lr, log_w = np.log2(optima["best_lr"].astype(float)), np.log2(optima[WIDTH].astype(float))
    by_rule = optima.groupby(RULE, sort=False)
    # Rows are sorted by (rule, width): diff() within a rule is "from the previous width".
    optima["drift_per_doubling"] = log_lr.groupby(optima[RULE]).diff() / log_w.groupby(optima[RULE]).diff()
    optima["slope_per_doubling"] = optima[RULE].map({
        rule: np.polyfit(log_w[idx], log_lr[idx], 1)[0] if len(idx) >= 2 else np.nan
        for rule, idx in by_rule.groups.items()
    })
    return optima


def too_few_lrs(grid: pd.DataFrame, metric: str) -> str:
    """The (rule, width) cells of ``grid`` with a metric value at fewer than 2 base LRs, named
    per rule ("constant: width 16 (1 LR), 32 (0 LRs)"); "" when there is none."""
    counts = grid.dropna(subset=[metric]).groupby([RULE, WIDTH])[LR].nunique()
    counts = counts.reindex(grid.groupby([RULE, WIDTH]).size().index, fill_value=0)
    thin = counts[counts < 2]
    parts = []
    for rule, cells in thin.groupby(level=0):
        widths = ", ".join(f"{int(w)} ({n} LR{'' if n == 1 else 's'})" for (_, w), n in cells.items())
        parts.append(f"{rule}: width {widths}")
    return "; ".join(parts)


def lr_transfer(final: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(``lr_grid``, ``lr_optima``, ``too_few_lrs``) of the final rows of a study; an
    ``AnalysisError`` when no width has a metric value at 2 or more base LRs."""
    missing = [c for c in (RULE, LR, WIDTH) if c not in final or final[c].isna().all()]
    if missing:
        raise AnalysisError(f"the runs lack {', '.join(missing)} (is config.yaml missing?)")
    grid = lr_grid(final, metric)
    optima = lr_optima(grid, metric)
    thin = too_few_lrs(grid, metric)
    if optima.empty:
        raise AnalysisError(f"LR transfer needs completed runs with a {metric} value at 2 or more base learning "
                            f"rates per width; no width has them ({thin or 'no completed run'})")
    return grid, optima, thin


def markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table (numbers to 4 significant digits)."""
    def cell(value: object) -> str:
        if isinstance(value, float):
            return "" if np.isnan(value) else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_report(grid: pd.DataFrame, optima: pd.DataFrame, thin: str, metric: str, out: Path) -> str:
    """Write ``lr_transfer``'s result into ``out`` (which must exist): the metric vs base LR per
    width and rule (``lr_transfer.png``), the fraction diverged on the grid (``lr_divergence.png``),
    ``lr_grid.csv``, ``lr_optima.csv`` and ``lr_optima.md``; returns lr_optima.md's text."""
    plots.apply_style()
    plots.save_figure(plots.lr_transfer_panels(grid, optima, metric), out / "lr_transfer.png")
    plots.save_figure(plots.divergence_heatmaps(grid), out / "lr_divergence.png")
    grid.to_csv(out / "lr_grid.csv", index=False)
    optima.to_csv(out / "lr_optima.csv", index=False)
    note = f"\nLeft out, fewer than 2 base LRs with a {metric} value: {thin}.\n" if thin else ""
    text = markdown(optima) + note
    (out / "lr_optima.md").write_text(text)
    return text
