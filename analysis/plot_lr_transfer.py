"""LR transfer of a width × base-LR study: optimum per width, its drift, and divergence.

``python -m analysis.plot_lr_transfer STUDY_DIR ... [--out DIR]``. For an LR × width grid (per
LR rule, several seeds): the final metric vs base LR, one curve per width with its minimum
starred, one panel per rule (``lr_transfer.png``); how far the optimum moves per doubling of
width (``lr_optima.md`` and ``lr_optima.csv``; 0 means the LR transfers, −1 means it halves with
each doubling, as standard parametrisation does for Adam); and the fraction of seeds that
diverged on the width × LR grid (``lr_divergence.png``, ``lr_grid.csv``). An optimum needs a
metric value at 2 or more base LRs of a width: widths with fewer are left out (and named), and a
study where no width has them is an error. Errors in the input print one line and exit with
status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract.cli import Parser, run, say


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = Parser("analysis.plot_lr_transfer", __doc__)
    parser.add_argument("results", nargs="+", type=Path, metavar="STUDY_DIR",
                        help="sweep folders, run folders, or folders holding them")
    parser.add_argument("--metric", help="metric column (default: FID vs reference stats, then FID vs training images, then fd_fmnist)")
    parser.add_argument("--out", type=Path, help="folder to write the figures and tables into (default: STUDY_DIR/analysis; studies/<name>/analysis "
                        "under the current folder when STUDY_DIR's committed table is read)")
    return parser.parse_args(argv)


if __name__ == "__main__":  # --help, --version and usage errors answer before pandas and matplotlib load (seconds)
    parse_args(None)


import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only: no display on cluster nodes

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import plots  # noqa: E402
from analysis.load import AnalysisError, default_metric, final_rows, load_study_table  # noqa: E402
from analysis.plot_scaling import default_out  # noqa: E402

RULE, LR, WIDTH = "train.lr_rule", "train.base_lr", "model.width"


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


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for unusable input)."""
    args = parse_args(argv)
    return run(lambda: _report(args))


def _report(args: argparse.Namespace) -> int:
    table = load_study_table(*args.results)
    say(f"read {table.attrs['source']}")
    metric = args.metric or default_metric(table)
    if metric not in table:
        raise AnalysisError(f"no metric {metric!r} in the results")
    grid, optima, thin = lr_transfer(final_rows(table, metric), metric)
    out = args.out or default_out(args.results[0], table.attrs["committed"])
    out.mkdir(parents=True, exist_ok=True)
    plots.apply_style()
    plots.save_figure(plots.lr_transfer_panels(grid, optima, metric), out / "lr_transfer.png")
    plots.save_figure(plots.divergence_heatmaps(grid), out / "lr_divergence.png")
    grid.to_csv(out / "lr_grid.csv", index=False)
    optima.to_csv(out / "lr_optima.csv", index=False)
    note = f"\nLeft out, fewer than 2 base LRs with a {metric} value: {thin}.\n" if thin else ""
    (out / "lr_optima.md").write_text(markdown(optima) + note)
    say(markdown(optima) + note, end="")
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
