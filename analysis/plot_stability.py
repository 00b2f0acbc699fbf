"""The width × base-LR stability map of a study: boundary, optimum, their slopes, LR mismatch.

``python -m analysis.plot_stability STUDY_DIR ... [--metric NAME] [--out DIR] [--bootstrap N]``.
Per (LR rule, width): the largest stable and the smallest unstable base LR (stable: completed;
unstable: diverged or collapsed), the boundary between them and the best base LR, with
intervals (``stability.csv``); the log-log slopes of the boundary and the optimum against width
with bootstrap CIs (``slopes.json``); the widest width at the narrowest's best LR and the reverse
(``lr_mismatch.csv``, ``lr_mismatch.md``); the tidy table read from run folders (``results.csv``,
which the command reads back where the run folders are gone); the metric against base LR per width and rule
(``fd_vs_lr.png``) and the boundary and optimum against width (``boundary_optimum.png``).
``--bracket-regex`` prints, instead, the ``sweeps.launch --only`` pattern of the extra seeds at
each bracket (scripts/reproduce_results.sh runs them after the seed-0 map). A width
whose LRs are all stable reads "boundary not crossed". Errors in the input print one line, exit
with status 2 and write nothing.

The command line only: ``analysis.stability`` computes, draws and writes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract.cli import Parser, run, say


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = Parser("analysis.plot_stability", __doc__)
    parser.add_argument("results", nargs="+", type=Path, metavar="STUDY_DIR",
                        help="sweep folders, run folders, or folders holding them")
    parser.add_argument("--metric", help="metric column (default: FID vs reference stats, then FID vs training images, then fd_fmnist)")
    parser.add_argument("--out", type=Path, help="folder to write the figures and tables into (default: STUDY_DIR/analysis; studies/<name>/analysis "
                        "under the current folder when STUDY_DIR's committed table is read)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the intervals and slope CIs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--bracket-regex", action="store_true",
                        help="print a sweeps.launch --only pattern for seeds 1-9 at each bracket's two base LRs, write nothing")
    args = parser.parse_args(argv)
    if args.bootstrap < 1:
        parser.error(f"--bootstrap must be >= 1, got {args.bootstrap}")
    return args


if __name__ == "__main__":  # --help, --version and usage errors answer before pandas and matplotlib load (seconds)
    parse_args(None)


import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only: no display on cluster nodes

from analysis.load import choose_metric, final_rows, load_study_table, save_table  # noqa: E402
from analysis.paths import default_out  # noqa: E402
from analysis.stability import bracket_regex, stability_map, write_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for unusable input)."""
    args = parse_args(argv)
    return run(lambda: _report(args))


def _report(args: argparse.Namespace) -> int:
    table = load_study_table(*args.results)
    say(f"read {table.attrs['source']}", file=sys.stderr if args.bracket_regex else None)
    metric = choose_metric(table, args.metric)
    result = stability_map(final_rows(table, metric), metric, n_resamples=args.bootstrap, seed=args.seed)
    if args.bracket_regex:
        print(bracket_regex(result.table))  # stdout holds the pattern alone: `--only "$(...)"` reads it
        return 0
    out = args.out or default_out(args.results[0], table.attrs["committed"])  # written only now: errors leave nothing
    say(write_report(result, out), end="")
    if not table.attrs["committed"]:  # the tidy table, so a clone without the run folders can redo the map
        save_table(table, out / "results.csv")
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
