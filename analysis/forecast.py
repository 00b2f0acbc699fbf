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
line, exit 2, nothing written.
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

ESTIMATORS = ("envelope", "isoflop", "parametric")
PI_LEVEL = 0.9
CI_LEVEL = 0.95
# a PI narrower than this many seed-to-seed standard deviations (in log FD) is implausible: a
# new run scatters at least that much
NARROW_PI_SIGMAS = 1.0


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
    from analysis.load import AnalysisError, default_metric, load_study_table, load_table, save_table, select_rows
    from analysis.paths import default_out

    table = load_table(args.table) if args.table is not None else load_study_table(*args.results)
    if table.attrs.get("source"):
        say(f"read {table.attrs['source']}", file=sys.stderr if args.json else None)
    table = select_rows(table, args.where)
    metric = args.metric or default_metric(table)
    if metric not in table:
        raise AnalysisError(f"no column {metric!r} in the results")
    table = co.measured_runs(table)
    drop = co.DROP_EARLY if args.drop_early is None else args.drop_early
    pts = co.points(table, metric, drop)
    if pts.empty:
        raise AnalysisError(f"no evaluation checkpoints with {metric}, g_gflops, images_seen and train_flops "
                            "among the completed runs: nothing to fit")
    budgets = sorted(pts["budget"].unique())
    sizes = sorted(pts["N"].unique())
    if len(sizes) < 2:
        raise AnalysisError(f"the study has one size (G {sizes[0]:.4g} GFLOPs): a law of size needs several")
    if len(budgets) < 2:
        raise AnalysisError(f"the study has one budget ({budgets[0]:.3g} FLOPs): an isoFLOP ladder needs several")
    if not co.isoflop_profiles(pts):
        raise AnalysisError(f"no budget was trained at three or more sizes (runs sharing a budget: their final "
                            f"training FLOPs within {co.BUDGET_TOLERANCE:.0%}): not an isoFLOP ladder; plan one with "
                            "a grid's budgets: section (sweeps/configs/isoflop_cpu.yaml)")
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
    forecast = _assemble(est, pts, budget, family, batch, query, args, drop, metric, table.attrs.get("source") or str(args.table))
    backtest = co.backtest(pts, args.bootstrap, PI_LEVEL, args.seed) if args.backtest else None
    validation = _validation(args.validation, est, metric, args.seed) if args.validation else None

    out.mkdir(parents=True, exist_ok=True)
    from analysis import plots

    plots.apply_style()
    plots.save_figure(plots.isoflop_profiles(est.profiles, metric), out / "isoflop_profiles.png")
    plots.save_figure(plots.n_opt_against_compute(est, budget, CI_LEVEL), out / "n_opt.png")
    if backtest is not None:
        backtest.to_csv(out / "backtest.csv", index=False)
        forecast["backtest"] = co.backtest_summary(backtest)
    if validation is not None:
        validation.to_csv(out / "validation.csv", index=False)
        plots.save_figure(plots.predicted_against_measured(validation, metric), out / "validation.png")
        forecast["validation"] = _validation_summary(validation)
    if not table.attrs.get("committed") and args.table is None:
        save_table(table, out / "results.csv")  # so the forecast reproduces from a clone without run folders
    text = json.dumps(forecast, indent=2, default=float) + "\n"
    (out / "forecast.json").write_text(text)
    (out / "report.md").write_text(_report(forecast))
    if args.json:
        sys.stdout.write(text)
    else:
        for line in _summary_lines(forecast):
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


def _prediction(est: Any, cand: Candidate, images: float, seed: int) -> dict[str, Any]:
    mean, (low, high) = est.predict(cand.g_gflops, images, PI_LEVEL, seed)
    return {"mean": mean, "pi": [low, high], "level": PI_LEVEL}


def _config(cand: Candidate, steps: int, batch: int) -> dict[str, Any]:
    return {"size": cand.name, "width": cand.width, "depth": cand.depth, "heads": cand.heads, "patch": cand.patch,
            "g_gflops": cand.g_gflops, "steps": steps, "batch": batch, "images": steps * batch,
            "train_flops": steps * batch * cand.flops_per_image}


def _assemble(est: Any, pts: Any, budget: float, family: list[Candidate], batch: int, query: Candidate | None,
              args: argparse.Namespace, drop: float, metric: str, source: str | None) -> dict[str, Any]:
    """forecast.json's content."""
    from analysis.compute_optimal import EXPONENT_BOUNDS as bounds

    budgets = sorted(pts["budget"].unique())
    warnings = []
    steps_of = {c.name: max(1, round(budget / (c.flops_per_image * batch))) for c in family}
    predicted = {c.name: float(est.law.predict(c.g_gflops, steps_of[c.name] * batch)) for c in family}
    best = min(family, key=lambda c: predicted[c.name])
    rec = _config(best, steps_of[best.name], batch)
    rec["predicted"] = _prediction(est, best, rec["images"], args.seed)
    low, high = rec["predicted"]["pi"]
    band = sorted((c for c in family if predicted[c.name] <= high), key=lambda c: c.g_gflops)
    rec["band"] = {"sizes": [c.name for c in band], "g_gflops": [band[0].g_gflops, band[-1].g_gflops],
                   "rule": f"predicted FD within the {PI_LEVEL:.0%} PI of the optimum"}
    if best.g_gflops in (min(c.g_gflops for c in family), max(c.g_gflops for c in family)):
        warnings.append(f"the recommended size {best.name} is at the edge of the candidate family: the optimum may lie beyond it")

    n_opt, n_ci = est.n_opt(budget), est.n_opt_ci(budget, CI_LEVEL)
    estimators = {name: {"n_opt": n_opt[name], "ci": n_ci[name]} for name in ESTIMATORS}
    estimators["envelope"]["slope"] = None if est.envelope is None else est.envelope.slope
    estimators["isoflop"]["slope"] = None if est.isoflop is None else est.isoflop.slope
    estimators["isoflop"]["profiles"] = [{"budget": p.budget, "n_opt": p.n_opt, "edge": p.edge} for p in est.profiles]
    lam = est.law
    estimators["parametric"]["slope"] = lam.beta / (lam.alpha + lam.beta) if lam.alpha + lam.beta > 0 else None
    for name in ESTIMATORS:
        if estimators[name]["n_opt"] is None:
            warnings.append(f"{name}: no estimate (too few budgets with an interior optimum)")
    cis = [estimators[name]["ci"] for name in ESTIMATORS if estimators[name]["ci"] is not None]
    agree = bool(cis) and max(c[0] for c in cis) <= min(c[1] for c in cis)

    law_ci = est.law_ci(CI_LEVEL)
    law = {name: {"value": getattr(lam, name), "ci": law_ci[name]} for name in ("E", "A", "alpha", "B", "beta")}
    for name in (n for n, ci in law_ci.items() if ci is None):
        warnings.append(f"law: no interval for {name}: the resamples do not spread it (pinned at a bound, or too few runs)")
    for name in lam.on_edge:
        warnings.append(f"law: {name} ended on its bound {bounds}: the data do not pin it")
    if pts["N"].nunique() < 3:
        warnings.append("law: fewer than three sizes: A and alpha are not identified")
    d_spread = pts.groupby("N")["D"].agg(lambda d: d.max() / d.min())
    if (d_spread < 1.5).all():
        warnings.append("law: every size was trained to about one D: B and beta are not identified")
    for name in ("alpha", "beta"):
        ci = law_ci[name]
        if ci is not None and (ci[0] <= 1e-3 or ci[1] >= bounds[1] - 1e-3):
            warnings.append(f"law: the CI of {name} reaches its bound {bounds}: not identified by this ladder")
    if est.seed_sigma is not None:
        half = (math.log(high) - math.log(low)) / 2
        if half < NARROW_PI_SIGMAS * est.seed_sigma:
            warnings.append(f"the {PI_LEVEL:.0%} PI (±{half:.3f} in log FD) is narrower than one seed-to-seed "
                            f"standard deviation ({est.seed_sigma:.3f}): implausibly narrow")
    factor = budget / max(budgets)
    if factor > 1:
        warnings.append(f"the budget is {factor:.3g}x the ladder's largest: the forecast extrapolates")

    ratio = pts["C"] / (pts["N"] * pts["D"])
    forecast: dict[str, Any] = {
        "source": source, "metric": metric, "budget": budget,
        "data": {"runs": int(pts["run_id"].nunique()), "evaluations": int(len(pts)), "dropped_early_fraction": drop,
                 "budgets": [float(b) for b in budgets], "g_gflops": sorted(float(n) for n in pts["N"].unique()),
                 "kappa": est.kappa, "kappa_range": [float(ratio.min()), float(ratio.max())],
                 "log_sigma": est.log_sigma, "seed_sigma": est.seed_sigma},
        "recommendation": rec,
        "estimators": estimators, "agree": agree,
        "law": law, "law_on_edge": lam.on_edge,
        "extrapolation": {"factor": factor, "ladder_max_budget": float(max(budgets))},
        "bootstrap": {"n_resamples": args.bootstrap, "seed": args.seed, "ci_level": CI_LEVEL,
                      "resampled_unit": "run"},
        "warnings": warnings,
    }
    if query is not None:
        block = _config(query, args.steps, batch)
        block["predicted"] = _prediction(est, query, block["images"], args.seed)
        forecast["query"] = block
    return json.loads(json.dumps(forecast, default=float))


def _validation(source: Path, est: Any, metric: str, seed: int) -> Any:
    """One row per measured run: its final FD against the law's prediction and PI."""
    import pandas as pd

    from analysis.compute_optimal import measured_runs
    from analysis.load import load_study_table, load_table

    table = load_table(source) if source.is_file() else load_study_table(source)
    table = measured_runs(table)
    final = table.dropna(subset=[metric]).sort_values("step").groupby("run_id").tail(1)
    rows = []
    for _, row in final.iterrows():
        mean, (low, high) = est.predict(row["g_gflops"], row["images_seen"], PI_LEVEL, seed)
        rows.append({"size": row.get("model", row["run_id"]), "seed": row.get("seed"), "train_flops": row["train_flops"],
                     "g_gflops": row["g_gflops"], "predicted_mean": mean, "pi_low": low, "pi_high": high,
                     "measured": row[metric]})
    return pd.DataFrame(rows)


def _validation_summary(rows: Any) -> dict[str, Any]:
    inside = (rows["pi_low"] <= rows["measured"]) & (rows["measured"] <= rows["pi_high"])
    are = (rows["predicted_mean"] - rows["measured"]).abs() / rows["measured"]
    return {"runs": int(len(rows)), "inside_pi": int(inside.sum()), "mean_are": float(are.mean())}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _ci(ci: list[float] | None) -> str:
    return "no interval" if ci is None else f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def _band_line(band: dict[str, Any]) -> str:
    sizes = band["sizes"]
    shown = ", ".join(sizes) if len(sizes) <= 6 else f"{', '.join(sizes[:3])}, ..., {', '.join(sizes[-3:])}"
    low, high = band["g_gflops"]
    return f"{len(sizes)} sizes tie (predicted within the PI; G {low:.4g} to {high:.4g} GFLOPs): {shown}"


def _summary_lines(f: dict[str, Any]) -> list[str]:
    rec, pred = f["recommendation"], f["recommendation"]["predicted"]
    lines = [f"budget {f['budget']:.3g} FLOPs ({f['extrapolation']['factor']:.3g}x the ladder's largest)",
             f"train {rec['size']} (G {rec['g_gflops']:.4g} GFLOPs) for {rec['steps']} steps at batch {rec['batch']}: "
             f"predicted {f['metric']} {pred['mean']:.4g}, {pred['level']:.0%} PI {_ci(pred['pi'])}",
             _band_line(rec["band"])]
    for name in ESTIMATORS:
        e = f["estimators"][name]
        lines.append(f"N_opt by {name}: {_fmt(e['n_opt'])} G GFLOPs, {CI_LEVEL:.0%} CI {_ci(e['ci'])}")
    lines.append("the estimators " + ("agree (their CIs overlap)" if f["agree"] else "disagree (their CIs do not all overlap)"))
    if "query" in f:
        q = f["query"]
        lines.append(f"{q['size']} for {q['steps']} steps: predicted {q['predicted']['mean']:.4g}, "
                     f"PI {_ci(q['predicted']['pi'])}")
    if "backtest" in f:
        for row in f["backtest"]:
            lines.append(f"backtest {row['step']}: {row['runs']} runs, mean ARE {row['mean_are']:.1%}, "
                         f"PI coverage {row['coverage']:.0%}")
    lines += [f"warning: {w}" for w in f["warnings"]]
    return lines


def _report(f: dict[str, Any]) -> str:
    law = f["law"]
    lines = ["# Compute-optimal forecast", "", f"Source: {f['source']}", "", *[f"- {line}" for line in _summary_lines(f)],
             "", "## Law", "", f"{f['metric']}(N, D) = E + A/N^alpha + B/D^beta (N: G GFLOPs per image, D: images)", "",
             "| parameter | value | 95% CI |", "|---|---|---|",
             *[f"| {name} | {_fmt(law[name]['value'])} | {_ci(law[name]['ci'])} |" for name in law], "",
             "## Estimators of N_opt at the budget", "", "| estimator | N_opt (G GFLOPs) | 95% CI | slope in C |",
             "|---|---|---|---|",
             *[f"| {name} | {_fmt(f['estimators'][name]['n_opt'])} | {_ci(f['estimators'][name]['ci'])} | "
               f"{_fmt(f['estimators'][name]['slope'])} |" for name in ESTIMATORS], ""]
    if "backtest" in f:
        lines += ["## Backtest", "", "| step | runs | mean ARE | PI coverage |", "|---|---|---|---|",
                  *[f"| {r['step']} | {r['runs']} | {r['mean_are']:.1%} | {r['coverage']:.0%} |" for r in f["backtest"]], ""]
    lines += ["Figures: isoflop_profiles.png, n_opt.png" + (", validation.png" if "validation" in f else ""), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
