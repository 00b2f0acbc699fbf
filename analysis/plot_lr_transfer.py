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

The command line only: ``analysis.lr_transfer`` computes, draws and writes.
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

from analysis.load import choose_metric, final_rows, load_study_table  # noqa: E402
from analysis.lr_transfer import lr_transfer, write_report  # noqa: E402
from analysis.paths import default_out  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for unusable input)."""
    args = parse_args(argv)
    return run(lambda: _report(args))


def _report(args: argparse.Namespace) -> int:
    table = load_study_table(*args.results)
    say(f"read {table.attrs['source']}")
    metric = choose_metric(table, args.metric)
    grid, optima, thin = lr_transfer(final_rows(table, metric), metric)
    out = args.out or default_out(args.results[0], table.attrs["committed"])
    out.mkdir(parents=True, exist_ok=True)
    say(write_report(grid, optima, thin, metric, out), end="")
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
