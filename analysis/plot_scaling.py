"""Scaling report of a study: final metric vs size, compute frontier, fits with bootstrap CIs.

``python -m analysis.plot_scaling STUDY_DIR ... [--out DIR]`` or ``--table CSV``. Writes into
``--out``: ``scaling_<x>.png`` (final metric vs size, fit and r), ``compute.png`` (learning
curves over training compute, frontier and its fit band), ``learning_curves.png``,
``residuals.png``, ``fit.json`` (fits with bootstrap CIs, exclusions and why), ``results.csv``
and ``results.parquet`` (the tidy table) and ``report.md``. Only completed runs enter a fit;
diverged, failed and unfinished runs are listed in ``fit.json`` and drawn with their own marker.
A compute frontier whose points all come from one run is one learning curve, not a frontier
across sizes: it is neither drawn nor fitted, and the report says so. `--where COLUMN=VALUE`
keeps a slice of a study (one MNG mode, one LR rule). Errors in the input print one line and
exit with status 2.

The command line only: ``analysis.scaling`` fits, draws and writes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract.cli import Parser, run, say

X_CHOICES = ("gflops", "params", "train_flops")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = Parser("analysis.plot_scaling", __doc__)
    parser.add_argument("results", nargs="*", type=Path, metavar="STUDY_DIR",
                        help="sweep folders, run folders, or folders holding them")
    parser.add_argument("--table", type=Path, metavar="CSV",
                        help="a table of the tidy shape (e.g. published points) instead of STUDY_DIR")
    parser.add_argument("--x", choices=X_CHOICES, default="gflops", help="size axis of the final-metric fit")
    parser.add_argument("--metric", help="metric column (default: FID vs reference stats, then FID vs training images, then fd_fmnist)")
    parser.add_argument("--out", type=Path, help="folder to write the report into (default: STUDY_DIR/analysis; "
                        "studies/<name>/analysis under the current folder with --table, or when STUDY_DIR's "
                        "committed table is read, so nothing committed is rewritten)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--irreducible", action="store_true", help="fit y = a·x^(−b) + c (c ≥ 0) instead of a·x^(−b)")
    parser.add_argument("--where", action="append", default=[], metavar="CONDITION",
                        help="keep only runs with COLUMN=VALUE (e.g. mng.mode=exp), or a numeric comparison "
                        "!=, <, <=, >, >= (model.width<=64) (repeatable)")
    args = parser.parse_args(argv)
    if bool(args.results) == (args.table is not None):
        parser.error("give the study folder(s) to analyse or --table CSV, one of the two")
    return args


if __name__ == "__main__":  # --help, --version and usage errors answer before pandas and matplotlib load (seconds)
    parse_args(None)


import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only: no display on cluster nodes

from analysis import fit as fitting  # noqa: E402
from analysis import plots  # noqa: E402
from analysis.load import load_study_table, load_table  # noqa: E402
from analysis.paths import default_out  # noqa: E402
from analysis.scaling import Study, analyse, check_fittable, make_study  # noqa: E402


def load_study(args: argparse.Namespace) -> Study:
    """The table, the metric, and the fitted/excluded split the arguments ask for."""
    if args.table is not None:
        required = [args.x] + ([args.metric] if args.metric else [])
        table = load_table(args.table, required=required)
    else:
        table = load_study_table(*args.results)
        say(f"read {table.attrs['source']}")
    return make_study(table, args.x, args.metric, args.where)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for unusable input)."""
    args = parse_args(argv)
    return run(lambda: _report(args))


def _report(args: argparse.Namespace) -> int:
    study = load_study(args)  # before anything is written: bad input leaves no folder behind
    out = args.out or default_out(args.table or args.results[0], args.table is not None or study.table.attrs["committed"])
    check_fittable(study, args.irreducible)
    out.mkdir(parents=True, exist_ok=True)
    result = analyse(study, out, args.bootstrap, args.seed, args.irreducible)
    final = result["final"]
    low, high = final["ci"]["b"]
    # the fit is metric = a * x^(-b) (+ c): b > 0 means the metric falls as x grows
    say(f"{study.metric} vs {study.x}: {study.metric} ∝ {study.x}^(-b), b = {_number(final['fit']['b'])} "
        f"[{fitting.ci_text((low, high), final.get('ci_missing', {}).get('b'), final.get('level', 0.95), _number)}], "
        f"r(log-log) = {_number(final['fit']['r'])}, r(semi-log) = {_number(final['r_semilog'])}, "
        f"n = {final['fit']['n']}, excluded = {len(result['excluded'])}")
    if "skipped" in result.get("frontier", {}):
        say(f"note: no compute-frontier fit: {result['frontier']['skipped']}")
    say(f"wrote {out}")
    return 0


def _number(value: float | None) -> str:
    """The terminal's numbers: 4 decimals, ASCII minus (copied into shells and spreadsheets)."""
    return plots.number(value, 4, minus="-")


if __name__ == "__main__":
    sys.exit(main())

