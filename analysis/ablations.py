"""The paper's two failure modes (§5) and the LR-rule checks, as tables and figures.

``python -m analysis.ablations STUDY_DIR [--out DIR]`` writes a study's reports: early-layer use
(§5.1, ``analysis.early_layers.early_layer_report``) for a study over ``mng.mode``, and
instability with width with the coordinate check (§5.2, ``analysis.instability.instability_report``)
for one over ``train.lr_rule`` or ``train.base_lr``. Each report is made from the study's run
folders when they are on disk, else redrawn from the tables committed in ``STUDY_DIR/analysis/``
(a fresh clone has no run folders), which it then never writes over. The notebooks
early_layer_use and instability show the same reports.

The command line only: the libraries above compute, draw and write.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract import cli

REPORTS = ("early_layer_use", "instability")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = cli.Parser("analysis.ablations", __doc__)
    parser.add_argument("study", type=Path, metavar="STUDY_DIR",
                        help="a sweep folder: its run folders are used when on disk, else the tables committed "
                             "in STUDY_DIR/analysis/")
    parser.add_argument("--out", type=Path, help="folder to write the figures and tables into (default: STUDY_DIR/analysis; "
                        "studies/<study>/analysis when it reads committed tables)")
    parser.add_argument("--report", choices=REPORTS, action="append",
                        help="report to make (repeatable; default: early_layer_use when the study varies mng.mode, "
                             "instability when it varies train.lr_rule or train.base_lr)")
    parser.add_argument("--probe-samples", type=int, default=64,
                        help="fixed (z, y) probes per run for the checkpoint probes (early_layer_use)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples of the probes for the early-share interval (early_layer_use)")
    parser.add_argument("--coord-check", type=Path, metavar="CSV",
                        help="python -m gat.coord_check's CSV (instability; default: STUDY_DIR/coord_check/coord_check.csv)")
    return parser.parse_args(argv)


if __name__ == "__main__":  # --help, --version and usage errors answer before pandas and matplotlib load (seconds)
    parse_args(None)


import matplotlib  # noqa: E402

from analysis import plots  # noqa: E402
from analysis.early_layers import early_layer_report  # noqa: E402
from analysis.instability import instability_report  # noqa: E402
from analysis.load import AnalysisError, study_coords  # noqa: E402
from analysis.paths import default_out  # noqa: E402
from analysis.traces import LR, MNG, RULE  # noqa: E402

# The grid axes whose variation calls for each report when --report is not given.
REPORT_AXES = {"early_layer_use": {MNG}, "instability": {RULE, LR}}


def default_reports(study: Path) -> list[str]:
    """The reports a sweep folder calls for, by the grid axes its manifest varies."""
    coords = study_coords(study)
    varied = {axis for axis in coords.columns if coords[axis].astype(str).nunique() > 1}
    chosen = [name for name in REPORTS if REPORT_AXES[name] & varied]
    if not chosen:
        raise AnalysisError(f"{study} varies none of {MNG}, {RULE}, {LR} (it varies "
                            f"{', '.join(sorted(varied)) or 'nothing'}); name a report with --report")
    return chosen


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for unusable input)."""
    args = parse_args(argv)
    return cli.run(lambda: _write_reports(args))


def _write_reports(args: argparse.Namespace) -> int:
    matplotlib.use("Agg")  # files only: no display on cluster nodes
    plots.apply_style()
    names = args.report or default_reports(args.study)
    made = {name: (early_layer_report(args.study, probe_samples=args.probe_samples, bootstrap=args.bootstrap)
                   if name == "early_layer_use" else instability_report(args.study, coord_check=args.coord_check))
            for name in names}
    if not any(report.figures for report in made.values()):
        why = "; ".join(f"{item}: {reason}" for report in made.values() for item, reason in report.missing.items())
        raise AnalysisError(f"{args.study}: no figure could be made ({why})")
    # a report made from committed tables never writes over them (they are in git)
    committed = any(report.source == "committed tables" for report in made.values())
    out = args.out or (default_out(args.study, untracked=True) if committed else args.study / "analysis")
    for name, report in made.items():
        written = report.save(out)
        cli.say(f"{name}, from the {report.source}: wrote {len(written)} file(s) to {out}")
        for item, reason in report.missing.items():
            cli.say(f"  not made: {item}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
