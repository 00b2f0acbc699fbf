"""What to train for a compute budget: ``python -m analysis.forecast STUDY... --budget FLOPS``.

Fits the three compute-optimal estimators of `analysis.compute_optimal` to a study's evaluation
checkpoints (an isoFLOP ladder: `budgets:` in a grid), bootstraps them over runs, and recommends
the buildable size whose predicted FD at the budget is lowest, with a prediction interval for a
new run (seed-to-seed noise included) and the band of sizes that tie with it. ``--size CONFIG
--steps N`` predicts one configuration; ``--backtest`` refits on the smaller budgets and on all
but the largest size and scores the predictions of the rest; ``--validation STUDY`` compares
measured runs with their predictions. Writes ``forecast.json``, ``report.md``,
``isoflop_profiles.png``, ``n_opt.png`` (and ``backtest.csv``, ``validation.csv``,
``validation.png``) into ``--out``; ``--json`` prints forecast.json. Bad input: one ``error:``
line, exit 2, nothing written. The command only parses, calls and writes: the recommendation,
forecast.json's content and the report are `analysis.recommend`'s, the candidate sizes
`analysis.candidates'`, the fits `analysis.compute_optimal`'s.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.cli import Parser, run, say

if TYPE_CHECKING:  # only for the hints: the libraries load after parsing, so --help stays fast
    from analysis.candidates import Candidate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = Parser("analysis.forecast", __doc__)
    parser.add_argument("results", nargs="*", type=Path, metavar="STUDY_DIR", help="the ladder's sweep folder(s)")
    parser.add_argument("--table", type=Path, metavar="CSV", help="a table of the tidy shape instead of STUDY_DIR")
    parser.add_argument("--budget", type=float, metavar="FLOPS", help="training FLOPs to plan for (e.g. 2e14)")
    parser.add_argument("--size", metavar="CONFIG", help="predict this size: a registry name (GAT-S/2), "
                        "w<width>-d<depth>-h<heads>-p<patch>, or a config YAML's model section; needs --steps")
    parser.add_argument("--steps", type=int, help="with --size: its training steps at the study's batch")
    parser.add_argument("--config", metavar="CONFIG", help="the study's run config (data, MNG, batch) for sizing "
                        "candidates; default: the grid recorded in STUDY_DIR/manifest.json")
    parser.add_argument("--metric", help="metric column (default as plot_scaling)")
    parser.add_argument("--where", action="append", default=[], metavar="CONDITION",
                        help="keep only runs matching COLUMN=VALUE, !=, <, <=, >, >= (repeatable)")
    parser.add_argument("--drop-early", type=float, default=None, metavar="FRACTION",
                        help="fraction of each run's earliest evaluations left out (default 0.1)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of runs (at least 100)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--backtest", action="store_true", help="also score rolling-origin and largest-size hold-outs")
    parser.add_argument("--validation", type=Path, metavar="STUDY_OR_CSV", help="measured runs to compare with their predictions")
    parser.add_argument("--out", type=Path, help="folder to write into (default as plot_scaling)")
    parser.add_argument("--json", action="store_true", help="print forecast.json to stdout (the folder is still written)")
    args = parser.parse_args(argv)
    if bool(args.results) == (args.table is not None):
        parser.error("give the study folder(s) or --table CSV, one of the two")
    if (args.size is None) != (args.steps is None):
        parser.error("--size and --steps go together")
    if args.budget is None and args.size is None:
        parser.error("give --budget FLOPS, or --size CONFIG --steps N")
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget > 0):
        parser.error(f"--budget must be a positive number of FLOPs, got {args.budget:g}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.bootstrap < 100:
        parser.error(f"--bootstrap must be >= 100, got {args.bootstrap}")
    if args.drop_early is not None and not 0 <= args.drop_early < 1:
        parser.error(f"--drop-early must be in [0, 1), got {args.drop_early:g}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for unusable input)."""
    args = parse_args(argv)
    return run(lambda: _forecast(args))


def _forecast(args: argparse.Namespace) -> int:
    # numpy, pandas, scipy and the plots load after parsing: --help stays fast
    from analysis import candidates
    from analysis import compute_optimal as co
    from analysis import recommend
    from analysis.load import AnalysisError, choose_metric, load_study_table, load_table, save_table, select_rows
    from analysis.paths import default_out

    table = load_table(args.table) if args.table is not None else load_study_table(*args.results)
    if table.attrs.get("source"):
        say(f"read {table.attrs['source']}", file=sys.stderr if args.json else None)
    table = select_rows(table, args.where)
    metric = choose_metric(table, args.metric)
    table = co.measured_runs(table)
    drop = co.DROP_EARLY if args.drop_early is None else args.drop_early
    pts = co.ladder_points(table, metric, drop)
    budgets = sorted(pts["budget"].unique())
    template = _template(args)
    batches = table["train.batch"].dropna().astype(int) if "train.batch" in table else []
    batch = Counter(batches).most_common(1)[0][0] if len(batches) else int(template["train.batch"])
    query = _query(args, template) if args.size else None
    budget = args.budget if args.budget is not None else query.flops_per_image * batch * args.steps
    smallest = min(pts.groupby("run_id")["C"].max())
    if budget < smallest:
        raise AnalysisError(f"--budget {budget:.3g} FLOPs is below the ladder's smallest cell ({smallest:.3g} FLOPs): "
                            "the forecast extrapolates up, not down; read the ladder's runs instead")
    family = candidates.family(table, template)
    candidates.check_flop_count(family, table)
    out = args.out or default_out(args.table or args.results[0],
                                  args.table is not None or bool(table.attrs.get("committed")))

    say(f"fitting {pts['run_id'].nunique()} runs, {len(pts)} evaluations, {len(budgets)} budgets "
        f"({args.bootstrap} bootstrap resamples)", file=sys.stderr if args.json else None)
    est = co.estimate(pts, args.bootstrap, args.seed)
    forecast = recommend.assemble(est, pts, budget, family, batch, drop=drop, metric=metric,
                                  source=table.attrs.get("source") or str(args.table), n_resamples=args.bootstrap,
                                  seed=args.seed, query=query, query_steps=args.steps)
    backtest = co.backtest(pts, args.bootstrap, recommend.PI_LEVEL, args.seed) if args.backtest else None
    validation = recommend.validation_rows(args.validation, est, metric, args.seed) if args.validation else None

    out.mkdir(parents=True, exist_ok=True)
    from analysis import plots

    plots.apply_style()
    plots.save_figure(plots.isoflop_profiles(est.profiles, metric), out / "isoflop_profiles.png")
    plots.save_figure(plots.n_opt_against_compute(est, budget, recommend.CI_LEVEL), out / "n_opt.png")
    if backtest is not None:
        backtest.to_csv(out / "backtest.csv", index=False)
        forecast["backtest"] = co.backtest_summary(backtest)
        forecast["warnings"] += co.one_sided_steps(forecast["backtest"])
    if validation is not None:
        validation.to_csv(out / "validation.csv", index=False)
        plots.save_figure(plots.predicted_against_measured(validation, metric), out / "validation.png")
        forecast["validation"] = recommend.validation_summary(validation)
    if not table.attrs.get("committed") and args.table is None:
        save_table(table, out / "results.csv")  # so the forecast reproduces from a clone without run folders
    text = json.dumps(forecast, indent=2, default=float) + "\n"
    (out / "forecast.json").write_text(text)
    (out / "report.md").write_text(recommend.report_markdown(forecast))
    if args.json:
        sys.stdout.write(text)
    else:
        for line in recommend.summary_lines(forecast):
            say(line)
        say(f"wrote {out}")
    return 0


def _template(args: argparse.Namespace) -> dict[str, Any]:
    """The flat run config candidates are sized with: --config, else the grid the study's
    manifest records (its first planned run)."""
    from analysis.candidates import template_from_config, template_from_study
    from analysis.load import AnalysisError

    if args.config:
        return template_from_config(args.config)
    if args.table is not None:
        raise AnalysisError("--table: sizing the recommendation needs the study's run config; give --config CONFIG")
    return template_from_study(args.results[0])


def _query(args: argparse.Namespace, template: dict[str, Any]) -> Candidate:
    """--size as a Candidate; a size that cannot be built is an error naming why."""
    from contract import config as gat_config
    from contract.errors import ConfigError
    from contract.sizes import parse_size

    from analysis.candidates import describe_size
    from analysis.load import AnalysisError

    try:
        path = Path(args.size)
        if path.suffix in (".yaml", ".yml"):
            model = gat_config.load_config(path).model
            size = (model.width, model.depth, model.heads, model.patch)
        else:
            parsed = parse_size(args.size)
            size = (parsed.width, parsed.depth, parsed.heads, parsed.patch)
        return describe_size(template, *size)
    except ConfigError as err:
        raise AnalysisError(f"--size {args.size}: not a buildable size: {err}") from err


if __name__ == "__main__":
    sys.exit(main())
