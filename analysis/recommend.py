"""The compute-optimal recommendation for a budget, and how it is written down: forecast.json's
content (``assemble``), the measured runs against their predictions (``validation_rows``,
``validation_summary``), and the printed summary and report.md (``summary_lines``, ``report_markdown``).

``python -m analysis.forecast`` is the command line around it: it loads the study, fits the
estimators (`analysis.compute_optimal.estimate`), sizes the candidates (`analysis.candidates`),
calls these and writes the files. Torch-free.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.candidates import Candidate
from analysis.compute_optimal import EXPONENT_BOUNDS, Estimates, measured_runs
from analysis.load import load_study_table, load_table

ESTIMATORS = ("envelope", "isoflop", "parametric")
PI_LEVEL = 0.9
CI_LEVEL = 0.95
# a PI narrower than this many seed-to-seed standard deviations (in log FD) is implausible: a
# new run scatters at least that much
NARROW_PI_SIGMAS = 1.0


def prediction(est: Estimates, cand: Candidate, images: float, seed: int) -> dict[str, Any]:
    """The law's predicted FD for ``cand`` trained on ``images`` images, with its PI_LEVEL
    prediction interval for a new run."""
    mean, (low, high) = est.predict(cand.g_gflops, images, PI_LEVEL, seed)
    return {"mean": mean, "pi": [low, high], "level": PI_LEVEL}


def run_config(cand: Candidate, steps: int, batch: int) -> dict[str, Any]:
    """What to train: the size, its steps at ``batch``, the images and training FLOPs."""
    return {"size": cand.name, "width": cand.width, "depth": cand.depth, "heads": cand.heads, "patch": cand.patch,
            "g_gflops": cand.g_gflops, "steps": steps, "batch": batch, "images": steps * batch,
            "train_flops": steps * batch * cand.flops_per_image}


def assemble(est: Estimates, pts: pd.DataFrame, budget: float, family: list[Candidate], batch: int, *,
             drop: float, metric: str, source: str | None, n_resamples: int, seed: int,
             query: Candidate | None = None, query_steps: int | None = None) -> dict[str, Any]:
    """forecast.json's content: the recommended size for ``budget`` (the family member with the
    lowest predicted FD, with its PI and the band of sizes that tie), the three estimators' N_opt,
    the law, the data it was fitted to and the warnings; ``query`` trained ``query_steps`` steps
    adds its prediction. ``est`` was bootstrapped ``n_resamples`` times from ``seed`` (which also
    seeds the PIs); ``drop`` is the fraction of early evaluations left out of ``pts``."""
    budgets = sorted(pts["budget"].unique())
    rec, rec_warnings = _recommendation(est, budget, family, batch, seed)
    estimators, agree, estimator_warnings = _estimators(est, budget)
    law, law_warnings = _law(est, pts)
    warnings = rec_warnings + estimator_warnings + law_warnings
    low, high = rec["predicted"]["pi"]
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
        "law": law, "law_on_edge": est.law.on_edge,
        "extrapolation": {"factor": factor, "ladder_max_budget": float(max(budgets))},
        "bootstrap": {"n_resamples": n_resamples, "seed": seed, "ci_level": CI_LEVEL,
                      "resampled_unit": "run"},
        "warnings": warnings,
    }
    if query is not None:
        if query_steps is None:
            raise ValueError("a query needs its steps (query_steps)")
        block = run_config(query, query_steps, batch)
        block["predicted"] = prediction(est, query, block["images"], seed)
        forecast["query"] = block
    return json.loads(json.dumps(forecast, default=float))


def _recommendation(est: Estimates, budget: float, family: list[Candidate], batch: int,
                    seed: int) -> tuple[dict[str, Any], list[str]]:
    """The family member the law predicts best at ``budget``, its PI, the band that ties with it."""
    warnings = []
    steps_of = {c.name: max(1, round(budget / (c.flops_per_image * batch))) for c in family}
    predicted = {c.name: float(est.law.predict(c.g_gflops, steps_of[c.name] * batch)) for c in family}
    best = min(family, key=lambda c: predicted[c.name])
    rec = run_config(best, steps_of[best.name], batch)
    rec["predicted"] = prediction(est, best, rec["images"], seed)
    high = rec["predicted"]["pi"][1]
    band = sorted((c for c in family if predicted[c.name] <= high), key=lambda c: c.g_gflops)
    rec["band"] = {"sizes": [c.name for c in band], "g_gflops": [band[0].g_gflops, band[-1].g_gflops],
                   "rule": f"predicted FD within the {PI_LEVEL:.0%} PI of the optimum"}
    if best.g_gflops in (min(c.g_gflops for c in family), max(c.g_gflops for c in family)):
        warnings.append(f"the recommended size {best.name} is at the edge of the candidate family: the optimum may lie beyond it")
    return rec, warnings


def _estimators(est: Estimates, budget: float) -> tuple[dict[str, Any], bool, list[str]]:
    """Each estimator's N_opt at ``budget`` with its CI and slope, and whether the CIs overlap."""
    n_opt, n_ci = est.n_opt(budget), est.n_opt_ci(budget, CI_LEVEL)
    estimators = {name: {"n_opt": n_opt[name], "ci": n_ci[name]} for name in ESTIMATORS}
    estimators["envelope"]["slope"] = None if est.envelope is None else est.envelope.slope
    estimators["isoflop"]["slope"] = None if est.isoflop is None else est.isoflop.slope
    estimators["isoflop"]["profiles"] = [{"budget": p.budget, "n_opt": p.n_opt, "edge": p.edge} for p in est.profiles]
    lam = est.law
    estimators["parametric"]["slope"] = lam.beta / (lam.alpha + lam.beta) if lam.alpha + lam.beta > 0 else None
    warnings = [f"{name}: no estimate (too few budgets with an interior optimum)"
                for name in ESTIMATORS if estimators[name]["n_opt"] is None]
    cis = [estimators[name]["ci"] for name in ESTIMATORS if estimators[name]["ci"] is not None]
    agree = bool(cis) and max(c[0] for c in cis) <= min(c[1] for c in cis)
    return estimators, agree, warnings


def _law(est: Estimates, pts: pd.DataFrame) -> tuple[dict[str, Any], list[str]]:
    """The law's parameters with their CIs, and what the ladder leaves unidentified."""
    lam, law_ci = est.law, est.law_ci(CI_LEVEL)
    law = {name: {"value": getattr(lam, name), "ci": law_ci[name]} for name in ("E", "A", "alpha", "B", "beta")}
    warnings = [f"law: no interval for {name}: the resamples do not spread it (pinned at a bound, or too few runs)"
                for name, ci in law_ci.items() if ci is None]
    warnings += [f"law: {name} ended on its bound {EXPONENT_BOUNDS}: the data do not pin it" for name in lam.on_edge]
    if pts["N"].nunique() < 3:
        warnings.append("law: fewer than three sizes: A and alpha are not identified")
    d_spread = pts.groupby("N")["D"].agg(lambda d: d.max() / d.min())
    if (d_spread < 1.5).all():
        warnings.append("law: every size was trained to about one D: B and beta are not identified")
    for name in ("alpha", "beta"):
        ci = law_ci[name]
        if ci is not None and (ci[0] <= 1e-3 or ci[1] >= EXPONENT_BOUNDS[1] - 1e-3):
            warnings.append(f"law: the CI of {name} reaches its bound {EXPONENT_BOUNDS}: not identified by this ladder")
    return law, warnings


def validation_rows(source: Path, est: Estimates, metric: str, seed: int) -> pd.DataFrame:
    """One row per measured run of ``source`` (a study folder or a table): its final ``metric``
    against the law's prediction and PI_LEVEL PI."""
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


def validation_summary(rows: pd.DataFrame) -> dict[str, Any]:
    """forecast.json's ``validation``: how many runs, how many inside their PI, the mean ARE."""
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


def summary_lines(f: dict[str, Any]) -> list[str]:
    """The lines the command prints (and report.md lists) for forecast.json's content ``f``."""
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
                         f"PI coverage {row['coverage']:.0%}, mean signed error {row['mean_bias']:+.1%} "
                         f"({row['over_predicted']} of {row['runs']} predicted too high)")
    lines += [f"warning: {w}" for w in f["warnings"]]
    return lines


def report_markdown(f: dict[str, Any]) -> str:
    """report.md for forecast.json's content ``f``."""
    law = f["law"]
    lines = ["# Compute-optimal forecast", "", f"Source: {f['source']}", "", *[f"- {line}" for line in summary_lines(f)],
             "", "## Law", "", f"{f['metric']}(N, D) = E + A/N^alpha + B/D^beta (N: G GFLOPs per image, D: images)", "",
             "| parameter | value | 95% CI |", "|---|---|---|",
             *[f"| {name} | {_fmt(law[name]['value'])} | {_ci(law[name]['ci'])} |" for name in law], "",
             "## Estimators of N_opt at the budget", "", "| estimator | N_opt (G GFLOPs) | 95% CI | slope in C |",
             "|---|---|---|---|",
             *[f"| {name} | {_fmt(f['estimators'][name]['n_opt'])} | {_ci(f['estimators'][name]['ci'])} | "
               f"{_fmt(f['estimators'][name]['slope'])} |" for name in ESTIMATORS], ""]
    if "backtest" in f:
        lines += ["## Backtest", "", "| step | runs | mean ARE | PI coverage | mean signed error | predicted too high |",
                  "|---|---|---|---|---|---|",
                  *[f"| {r['step']} | {r['runs']} | {r['mean_are']:.1%} | {r['coverage']:.0%} | "
                    f"{r['mean_bias']:+.1%} | {r['over_predicted']} |" for r in f["backtest"]], ""]
    lines += ["Figures: isoflop_profiles.png, n_opt.png" + (", validation.png" if "validation" in f else ""), ""]
    return "\n".join(lines)
