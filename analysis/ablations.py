"""The paper's two failure modes (§5) and the LR-rule checks, as tables and figures.

Early-layer use (§5.1), per MNG mode:
- ``block_profiles``: the trainer's per-block diagnostics (ablation effect, residual-update
  ratio) at each run's last eval tick, from stats.jsonl;
- ``probe_runs``: the same measured on the EMA generator of each run's newest checkpoint with a
  larger probe set, in latent space and decoded pixels, plus per-block feature PCA maps
  (through ``gat.probe``, the trainer's public probing API);
- ``early_share``: the share of the total ablation effect carried by the first half of the
  blocks, with a bootstrap interval over probe samples.

Instability with width (§5.2), per LR rule: ``stats_traces`` (every stats line: grad norms,
losses, diagnostics), ``output_change_by_width`` (relative output change of G and of D's logits
per step), ``divergence_summary`` (rate and step of divergence on width × LR × rule).

Coordinate check (μP style): ``load_coord_check`` reads ``python -m gat.coord_check``'s CSV,
``coord_table`` / ``coord_slopes`` summarise it. LR transfer: ``rule_predictions`` turns the
empirical optimum at one width into what each LR rule predicts at the others, for
``plot_lr_optima_overlay`` (``python -m sweeps.tune`` writes the optima).

Tables come from ``analysis.load.load_results``; figures use ``analysis.plots``' house style.

Reports: ``early_layer_report`` and ``instability_report`` make a study's tables and every
figure they allow, from its run folders when they are on disk, else from the tables committed in
``STUDY_DIR/analysis/`` (a fresh clone has no run folders). The notebooks early_layer_use and
instability show them; ``python -m analysis.ablations STUDY_DIR [--out DIR]`` writes them.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract import cli, rundir

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
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from tqdm import tqdm  # noqa: E402

from analysis import plots  # noqa: E402
from analysis.load import ID_DTYPES, AnalysisError, load_study_runs, study_coords  # noqa: E402
from analysis.plot_scaling import default_out  # noqa: E402
from gat.lr_rules import RULES, learning_rate  # noqa: E402

RULE, LR, WIDTH, MNG = "train.lr_rule", "train.base_lr", "model.width", "mng.mode"
# Run-level columns carried into per-line tables (all present in analysis.load's table).
RUN_COLUMNS = ("run_id", "run_dir", "status", "diverged_step", WIDTH, "model.depth", RULE, LR, MNG, "seed")
TRACE_KEYS = ("loss_d", "loss_g", "grad_norm_g", "grad_norm_d", "r1", "r2")
DIAGNOSTIC_SCALARS = ("g_output_change", "d_logit_change", "g_act_std", "d_act_std")
MNG_ORDER = ("exp", "lin", "msg", "off")


# --- reading per-line data ------------------------------------------------------------------

def runs(table: pd.DataFrame) -> pd.DataFrame:
    """One row per run of an ``analysis.load`` table, with the run-level columns only."""
    missing = [c for c in RUN_COLUMNS if c not in table]
    if missing:
        raise AnalysisError(f"the table lacks {', '.join(missing)} (build it with analysis.load.load_results)")
    return table.drop_duplicates("run_id")[list(RUN_COLUMNS)].reset_index(drop=True)


def stats_traces(table: pd.DataFrame) -> pd.DataFrame:
    """One row per stats line per run: the run columns, ``step``, the logged terms
    (``TRACE_KEYS``) and the scalar diagnostics (NaN except at eval ticks)."""
    rows = []
    for run in runs(table).to_dict(orient="records"):
        for line in rundir.read_stats(run["run_dir"]):
            diagnostics = line.get("diagnostics") or {}
            rows.append({**run, "step": line.get("step"),
                         **{key: line.get(key) for key in TRACE_KEYS},
                         **{key: diagnostics.get(key) for key in DIAGNOSTIC_SCALARS}})
    columns = [*RUN_COLUMNS, "step", *TRACE_KEYS, *DIAGNOSTIC_SCALARS]
    traces = pd.DataFrame(rows, columns=columns)
    numeric = ["step", *TRACE_KEYS, *DIAGNOSTIC_SCALARS]
    traces[numeric] = traces[numeric].apply(pd.to_numeric, errors="coerce")
    return traces


# --- early-layer use -----------------------------------------------------------------------

def block_profiles(table: pd.DataFrame) -> pd.DataFrame:
    """Per run and block, the trainer's ``g_block_ablation`` and ``g_block_update_ratio`` at
    the run's last eval tick that has them. ``depth_frac`` = (block + 1) / blocks puts models of
    different depth on one axis."""
    rows = []
    for run in runs(table).to_dict(orient="records"):
        ticks = [line for line in rundir.read_stats(run["run_dir"])
                 if (line.get("diagnostics") or {}).get("g_block_ablation")]
        if not ticks:
            continue
        last = ticks[-1]
        ablation = last["diagnostics"]["g_block_ablation"]
        update = last["diagnostics"].get("g_block_update_ratio") or [np.nan] * len(ablation)
        for block, (effect, ratio) in enumerate(zip(ablation, update)):
            rows.append({**run, "step": last.get("step"), "block": block, "depth_frac": (block + 1) / len(ablation),
                         "ablation": effect, "update_ratio": ratio})
    return pd.DataFrame(rows, columns=[*RUN_COLUMNS, "step", "block", "depth_frac", "ablation", "update_ratio"])


def early_share(ablation: np.ndarray, *, n_boot: int = 1000, level: float = 0.9, seed: int = 0) -> dict[str, float]:
    """Share of the total ablation effect carried by the first half of the blocks.

    ``ablation`` is [blocks, samples] (per-sample effect of skipping each block). The share is
    Σ_{l < L/2} mean_n A[l, n] / Σ_l mean_n A[l, n]; its interval resamples probe samples with
    replacement (percentile bootstrap at ``level``). With an odd depth the middle block counts
    half to each side, so the share is 0.5 when every block matters equally.
    """
    ablation = np.asarray(ablation, dtype=float)
    if ablation.ndim != 2 or ablation.shape[1] == 0:
        raise AnalysisError(f"expected ablation effects [blocks, samples], got shape {ablation.shape}")
    blocks = ablation.shape[0]
    weights = np.clip(blocks / 2 - np.arange(blocks), 0.0, 1.0)  # 1 for the first half, 0.5 for a middle block

    def share(per_block: np.ndarray) -> np.ndarray:
        total = per_block.sum(axis=-1)
        return np.divide((per_block * weights).sum(axis=-1), total, out=np.full_like(total, np.nan), where=total > 0)

    rng = np.random.default_rng(seed)
    samples = ablation.shape[1]
    draws = rng.integers(0, samples, size=(n_boot, samples))
    boot = share(ablation[:, draws].mean(axis=2).T)  # [n_boot, blocks] per-block means -> shares
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(boot, [tail, 100 - tail]) if np.isfinite(boot).any() else (np.nan, np.nan)
    return {"share": float(share(ablation.mean(axis=1))), "low": float(low), "high": float(high), "level": level}


def probe_runs(table: pd.DataFrame, *, num: int = 64, seed: int = 0, decode: bool = True,
               pca_samples: int = 4, states: tuple[str, ...] = ("completed",)) -> dict[str, Any]:
    """``gat.probe.probe_run`` on every run in ``states`` that has a checkpoint: run id →
    ``BlockEffects`` (per-block, per-sample ablation in latents and pixels, update ratios, PCA maps)."""
    from gat.probe import probe_run  # torch and the model code load only when probing

    chosen = [run for run in runs(table).to_dict(orient="records")
              if run["status"] in states and (Path(run["run_dir"]) / "checkpoints").is_dir()]
    if not chosen:
        raise AnalysisError(f"no run in state {', '.join(states)} has a checkpoint to probe")
    return {run["run_id"]: probe_run(run["run_dir"], num=num, seed=seed, decode=decode, pca_samples=pca_samples)
            for run in tqdm(chosen, desc="probing", unit="run", disable=None)}  # disable=None: on a terminal only


def probe_frame(table: pd.DataFrame, effects: dict[str, Any]) -> pd.DataFrame:
    """Long table of probe results: one row per run × block × measure (``ablation_latent``,
    ``ablation_pixel``, ``update_ratio``) with the mean over probe samples in ``value``."""
    info = runs(table).set_index("run_id")
    rows = []
    for run_id, effect in effects.items():
        measures = {"ablation_latent": effect.ablation_latent, "update_ratio": effect.update_ratio}
        if effect.ablation_pixel is not None:
            measures["ablation_pixel"] = effect.ablation_pixel
        blocks = effect.num_blocks
        for measure, values in measures.items():
            for block, mean in enumerate(values.mean(axis=1)):
                rows.append({"run_id": run_id, **info.loc[run_id].to_dict(), "measure": measure, "block": block,
                             "depth_frac": (block + 1) / blocks, "value": float(mean)})
    return pd.DataFrame(rows)


def early_share_table(table: pd.DataFrame, effects: dict[str, Any], *, n_boot: int = 1000,
                      level: float = 0.9, seed: int = 0) -> pd.DataFrame:
    """Per run and space (latent, pixel): ``early_share`` of its probe ablation effects."""
    info = runs(table).set_index("run_id")
    rows = []
    for run_id, effect in effects.items():
        spaces = {"latent": effect.ablation_latent, "pixel": effect.ablation_pixel}
        for space, ablation in spaces.items():
            if ablation is not None:
                rows.append({"run_id": run_id, MNG: info.loc[run_id, MNG], WIDTH: info.loc[run_id, WIDTH],
                             "seed": info.loc[run_id, "seed"], "space": space,
                             **early_share(ablation, n_boot=n_boot, level=level, seed=seed)})
    return pd.DataFrame(rows)


def widest_pca_maps(table: pd.DataFrame, effects: dict[str, Any]) -> dict[str, np.ndarray]:
    """For ``plot_pca_maps``: the PCA maps of the widest probed run (lowest seed) of each MNG
    mode, labelled "MNG <mode>"."""
    probed = runs(table)
    probed = probed[probed["run_id"].isin(effects)]
    widest = probed.sort_values([WIDTH, "seed"], ascending=[False, True]).drop_duplicates(MNG)
    widest = widest.assign(**{MNG: widest[MNG].astype(str)}).set_index(MNG)
    return {f"MNG {mode}": effects[widest.loc[mode, "run_id"]].pca_maps for mode in _mng_order(widest.index.to_series())}


def _mng_order(values: pd.Series) -> list[str]:
    present = [str(v) for v in values.dropna().unique()]
    return [m for m in MNG_ORDER if m in present] + sorted(set(present) - set(MNG_ORDER))


def plot_block_profiles(profiles: pd.DataFrame, measures: dict[str, str] | None = None,
                        value: str | None = None) -> plt.Figure:
    """One panel per measure: the per-block effect vs relative depth, one line per MNG mode
    (mean over runs, band = min–max), as the reviewers' quantitative Fig. 4a.

    ``profiles`` is ``block_profiles`` (wide: a column per measure) or ``probe_frame`` (long:
    ``measure``/``value``, give ``value="value"``)."""
    if value is not None:
        profiles = profiles.pivot_table(index=["run_id", MNG, "depth_frac"], columns="measure", values=value).reset_index()
    measures = measures or {
        key: label for key, label in (
            ("ablation", "output change when block skipped"), ("ablation_latent", "latent change when block skipped"),
            ("ablation_pixel", "pixel RMS change when block skipped"), ("update_ratio", "residual update ‖Δh‖/‖h‖"),
        ) if key in profiles
    }
    if profiles.empty or not measures:
        raise AnalysisError("no per-block diagnostics to plot (no eval tick with g_block_ablation?)")
    order = _mng_order(profiles[MNG])
    palette = dict(zip(order, sns.color_palette("colorblind", n_colors=len(order))))
    fig, axes = plt.subplots(1, len(measures), figsize=(5.2 * len(measures), 3.6), squeeze=False)
    for ax, (column, label) in zip(axes.flat, measures.items()):
        for mode in order:
            stats = profiles[profiles[MNG] == mode].groupby("depth_frac")[column].agg(["mean", "min", "max"])
            ax.plot(stats.index, stats["mean"], marker="o", ms=3, color=palette[mode], label=f"MNG {mode}")
            ax.fill_between(stats.index, stats["min"], stats["max"], color=palette[mode], alpha=0.15, lw=0)
        ax.set_yscale("log")
        ax.set_xlabel("block (fraction of depth)")
        ax.set_ylabel(label)
    axes.flat[-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


def plot_pca_maps(maps: dict[str, np.ndarray], sample: int = 0, max_columns: int = 13) -> plt.Figure:
    """Feature PCA maps side by side: one row per label (e.g. MNG mode), one column per block
    (entry 0 = the input tokens; long stacks are thinned evenly to ``max_columns``).

    ``maps`` maps a row label to ``BlockEffects.pca_maps`` [blocks + 1, samples, g, g, 3]."""
    if not maps:
        raise AnalysisError("no PCA maps to draw")
    depth = max(m.shape[0] for m in maps.values())
    columns = np.unique(np.linspace(0, depth - 1, min(depth, max_columns)).round().astype(int))
    fig, axes = plt.subplots(len(maps), len(columns), figsize=(1.2 * len(columns) + 1, 1.3 * len(maps)),
                             squeeze=False)
    for row, (label, stack) in zip(axes, maps.items()):
        for ax, index in zip(row, columns):
            if index < stack.shape[0]:
                ax.imshow(stack[index, sample], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        row[0].set_ylabel(label, rotation=0, ha="right", va="center")
    for ax, index in zip(axes[0], columns):
        ax.set_title("input" if index == 0 else f"block {index}", fontsize="x-small")
    return fig


def plot_early_share(shares: pd.DataFrame) -> plt.Figure:
    """``early_share_table`` vs width, one colour per MNG mode: each run a point with its
    bootstrap interval, the line through the per-width mean; one panel per space."""
    spaces = list(dict.fromkeys(shares["space"]))
    order = _mng_order(shares[MNG])
    colours = dict(zip(order, sns.color_palette("colorblind", n_colors=len(order))))
    fig, axes = plt.subplots(1, len(spaces), figsize=(4.2 * len(spaces), 3.4), squeeze=False, sharey=True)
    for ax, space in zip(axes.flat, spaces):
        part = shares[shares["space"] == space]
        for i, mode in enumerate(order):
            mode_rows = part[part[MNG].astype(str) == mode].sort_values(WIDTH)
            # modes side by side at each width, so intervals do not hide each other
            x = mode_rows[WIDTH] * 2 ** (0.06 * (i - (len(order) - 1) / 2))
            share = mode_rows["share"]
            ax.errorbar(x, share, yerr=[share - mode_rows["low"], mode_rows["high"] - share],
                        fmt="o", ms=4, capsize=2, color=colours[mode], label=f"MNG {mode}")
            mean = mode_rows.groupby(WIDTH)["share"].mean()
            ax.plot(mean.index, mean.values, color=colours[mode], lw=1.2)
        ax.axhline(0.5, color="grey", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("width")
        ax.set_title(f"{space} space")
    axes.flat[0].set_ylabel("share of ablation effect\nin the first half of G's blocks")
    axes.flat[-1].legend(loc="lower left", frameon=False)
    return fig


# --- instability ---------------------------------------------------------------------------

def output_change_by_width(traces: pd.DataFrame) -> pd.DataFrame:
    """Per (rule, width): the per-step relative output change of G and of D's logits, as the
    median over each run's eval ticks, then mean/min/max over runs (seeds, LRs)."""
    ticks = traces.dropna(subset=["g_output_change", "d_logit_change"], how="all")
    per_run = ticks.groupby(["run_id", RULE, WIDTH])[["g_output_change", "d_logit_change"]].median().reset_index()
    summary = per_run.groupby([RULE, WIDTH]).agg(
        g_output_change=("g_output_change", "mean"), g_min=("g_output_change", "min"), g_max=("g_output_change", "max"),
        d_logit_change=("d_logit_change", "mean"), d_min=("d_logit_change", "min"), d_max=("d_logit_change", "max"),
        n_runs=("run_id", "nunique"),
    )
    return summary.reset_index()


def plot_output_change(summary: pd.DataFrame) -> plt.Figure:
    """Relative change per step vs width (log-log), one line per LR rule: G's output and D's
    logits. A rule that holds the output speed fixed gives flat lines."""
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6), squeeze=False)
    rules = sorted(summary[RULE].unique())
    colours = dict(zip(rules, sns.color_palette("colorblind", n_colors=len(rules))))
    for ax, (column, low, high, title) in zip(axes.flat, (
        ("g_output_change", "g_min", "g_max", "G output ‖ΔG(z)‖/‖G(z)‖ per step"),
        ("d_logit_change", "d_min", "d_max", "D logits ‖ΔD(x)‖/‖D(x)‖ per step"),
    )):
        for rule in rules:
            part = summary[summary[RULE] == rule].sort_values(WIDTH)
            ax.plot(part[WIDTH], part[column], marker="o", color=colours[rule], label=rule)
            ax.fill_between(part[WIDTH], part[low], part[high], color=colours[rule], alpha=0.15, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width")
        ax.set_ylabel("relative change")
        ax.set_title(title)
    axes.flat[-1].legend(title="LR rule", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


def divergence_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (rule, width, base LR): runs, finished runs (completed, diverged or collapsed), the
    diverged and collapsed counts, fraction diverged among the finished, fraction unstable
    (diverged or collapsed) and the median step of divergence."""
    per_run = runs(table)
    per_run = per_run.assign(
        _finished=per_run["status"].isin(["completed", "diverged", "collapsed"]),
        _diverged=(per_run["status"] == "diverged").astype(float),
        _collapsed=(per_run["status"] == "collapsed").astype(float),
        _step=pd.to_numeric(per_run["diverged_step"].where(per_run["status"] == "diverged"), errors="coerce"),
    )
    grouped = per_run.groupby([RULE, WIDTH, LR])
    summary = pd.DataFrame({
        "n_runs": grouped.size(),
        "n_finished": grouped["_finished"].sum(),
        "n_diverged": grouped["_diverged"].sum(),
        "n_collapsed": grouped["_collapsed"].sum(),
        "median_diverged_step": grouped["_step"].median(),
    }).reset_index()
    finished = summary["n_finished"].where(summary["n_finished"] > 0)
    summary["frac_diverged"] = summary["n_diverged"] / finished
    summary["frac_unstable"] = (summary["n_diverged"] + summary["n_collapsed"]) / finished
    return summary


def plot_divergence(summary: pd.DataFrame) -> plt.Figure:
    """Fraction diverged (heatmaps per rule, ``plots.divergence_heatmaps``) is the rate; this
    draws the step of divergence vs width, one panel per rule, coloured by base LR."""
    diverged = summary[summary["n_diverged"] > 0]
    rules = sorted(summary[RULE].unique())
    fig, axes = plt.subplots(1, len(rules), figsize=(4.2 * len(rules), 3.4), squeeze=False, sharey=True)
    lrs = sorted(summary[LR].unique())
    colours = dict(zip(lrs, sns.color_palette("rocket_r", n_colors=len(lrs))))
    for ax, rule in zip(axes.flat, rules):
        part = diverged[diverged[RULE] == rule]
        for lr, group in part.groupby(LR):
            ax.scatter(group[WIDTH], group["median_diverged_step"], s=30 + 60 * group["frac_diverged"],
                       color=colours[lr], edgecolor="black", linewidth=0.4, label=f"{lr:.3g}")
        if part.empty:
            ax.text(0.5, 0.5, "no run diverged", transform=ax.transAxes, ha="center", va="center")
        ax.set_xscale("log", base=2)
        ax.set_title(f"LR rule: {rule}")
        ax.set_xlabel("width")
        ax.set_ylabel("step of divergence (median)")
        if not part.empty:
            ax.legend(title="base LR", fontsize="x-small")
    return fig


def plot_grad_norms(traces: pd.DataFrame) -> plt.Figure:
    """Pre-clip gradient norms of G (top) and D (bottom) over training, one panel per LR rule,
    one line per run coloured by width (log y)."""
    rules = sorted(traces[RULE].dropna().unique())
    widths = sorted(traces[WIDTH].dropna().unique())
    colours = dict(zip(widths, sns.color_palette("viridis", n_colors=len(widths))))
    fig, axes = plt.subplots(2, len(rules), figsize=(4.2 * len(rules), 5.6), squeeze=False, sharex=True)
    for col, rule in enumerate(rules):
        part = traces[traces[RULE] == rule]
        for row, column in enumerate(("grad_norm_g", "grad_norm_d")):
            ax = axes[row, col]
            for (_, width), run in part.groupby(["run_id", WIDTH]):
                ax.plot(run["step"], run[column], color=colours[width], lw=1.0, alpha=0.85)
            ax.set_yscale("log")
            ax.set_title(f"{rule}: {'G' if row == 0 else 'D'}")
            ax.set_xlabel(plots.axis_label("step"))
            ax.set_ylabel("grad norm (before clipping)")
    for width, colour in colours.items():
        axes[0, -1].plot([], [], color=colour, label=str(int(width)))
    axes[0, -1].legend(title="width", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


# --- coordinate check ----------------------------------------------------------------------

COORD_COLUMNS = ("net", "module", "width", "rule", "seed", "step", "rms")


def load_coord_check(path: str | Path) -> pd.DataFrame:
    """The CSV ``python -m gat.coord_check`` writes, plus ``kind``: the module with its block
    index removed (``blocks.attn``), which groups the per-block curves."""
    path = Path(path)
    if path.is_dir():
        path = path / "coord_check.csv"
    if not path.is_file():
        raise AnalysisError(f"{path}: no such file (run python -m gat.coord_check --out {path.parent})")
    frame = pd.read_csv(path)
    missing = [c for c in COORD_COLUMNS if c not in frame]
    if missing:
        raise AnalysisError(f"{path}: missing column(s) {', '.join(missing)}")
    frame["kind"] = frame["module"].map(lambda name: re.sub(r"\.\d+", "", name))
    return frame


def _final_step(coords: pd.DataFrame, step: int | None) -> pd.DataFrame:
    return coords[coords["step"] == (coords["step"].max() if step is None else step)]


def coord_table(coords: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """Activation RMS at ``step`` (default: the last), mean over seeds: rows (net, rule,
    module), one column per width."""
    at = _final_step(coords, step)
    return at.pivot_table(index=["net", "rule", "module"], columns="width", values="rms", aggfunc="mean")


def coord_slopes(coords: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """How activations grow with width at ``step``: least-squares slope of log2 RMS on log2
    width per (net, rule, module). 0 = width-independent (what a transferring rule gives);
    1 = doubling with every doubling of width."""
    at = _final_step(coords, step).groupby(["net", "rule", "module", "width"])["rms"].mean().reset_index()
    rows = []
    for (net, rule, module), group in at.groupby(["net", "rule", "module"]):
        slope = np.polyfit(np.log2(group["width"]), np.log2(group["rms"]), 1)[0] if len(group) >= 2 else np.nan
        rows.append({"net": net, "rule": rule, "module": module, "slope": slope})
    return pd.DataFrame(rows)


def plot_coord_check(coords: pd.DataFrame, step: int | None = None) -> plt.Figure:
    """microsoft/mup's coord-check plot: activation RMS vs width (log-log) at ``step``, one
    panel per (net, rule), one thin line per module coloured by module kind."""
    chosen = _final_step(coords, step)
    at = chosen.groupby(["net", "rule", "module", "kind", "width"])["rms"].mean().reset_index()
    nets, rules = sorted(at["net"].unique(), reverse=True), sorted(at["rule"].unique())  # G above D
    kinds = sorted(at["kind"].unique())
    colours = dict(zip(kinds, sns.color_palette("colorblind", n_colors=len(kinds))))
    fig, axes = plt.subplots(len(nets), len(rules), figsize=(3.8 * len(rules), 3.2 * len(nets)),
                             squeeze=False, sharey="row")
    for row, net in zip(axes, nets):
        for ax, rule in zip(row, rules):
            part = at[(at["net"] == net) & (at["rule"] == rule)]
            for (module, kind), curve in part.groupby(["module", "kind"]):
                ax.plot(curve["width"], curve["rms"], color=colours[kind], marker=".", lw=1.0, alpha=0.8)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{net}, LR rule {rule}")
    for ax in axes[-1]:
        ax.set_xlabel("width")  # on the bottom row only: a row's x label would sit on the next row's titles
    for ax in axes[:, 0]:
        ax.set_ylabel("activation RMS")
    for kind, colour in colours.items():
        axes[0, -1].plot([], [], color=colour, label=kind)
    axes[0, -1].legend(title="module", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.suptitle(f"activation RMS after {int(chosen['step'].max())} training step(s)", fontsize="medium")
    return fig


# --- LR transfer ---------------------------------------------------------------------------

def rule_predictions(optima: pd.DataFrame, rules: tuple[str, ...] = RULES, anchor_width: int | None = None,
                     lr_column: str = "effective_lr") -> pd.DataFrame:
    """What each LR rule predicts for the optimal LR at every width of ``optima``, anchored at
    the empirical optimum at ``anchor_width`` (default the smallest width; the geometric mean
    when several searches cover it): lr(w) = ``gat.lr_rules.learning_rate(rule, w, lr*, w₀)``.

    ``optima`` needs ``model.width`` and ``lr_column`` (``python -m sweeps.tune`` writes
    ``best_lr.csv`` with both)."""
    for column in (WIDTH, lr_column):
        if column not in optima:
            raise AnalysisError(f"the optima table lacks {column!r} (columns: {', '.join(optima.columns)})")
    widths = sorted(optima[WIDTH].unique())
    anchor_width = anchor_width or widths[0]
    at_anchor = optima.loc[optima[WIDTH] == anchor_width, lr_column].astype(float)
    if at_anchor.empty:
        raise AnalysisError(f"no optimum at the anchor width {anchor_width}")
    anchor_lr = float(np.exp(np.log(at_anchor).mean()))
    grid = np.unique(np.geomspace(min(widths), max(widths), 50).tolist() + list(widths))
    return pd.DataFrame([{"rule": rule, WIDTH: w, "predicted_lr": learning_rate(rule, w, anchor_lr, anchor_width)}
                         for rule in rules for w in grid])


def plot_lr_optima_overlay(optima: pd.DataFrame, predictions: pd.DataFrame,
                           lr_column: str = "effective_lr") -> plt.Figure:
    """Empirical optimal LR per width (points; one marker per searched rule when ``optima``
    has ``train.lr_rule``) against each rule's prediction (lines), log-log."""
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    rules = list(dict.fromkeys(predictions["rule"]))
    colours = dict(zip(rules, sns.color_palette("colorblind", n_colors=len(rules))))
    for rule in rules:
        line = predictions[predictions["rule"] == rule]
        ax.plot(line[WIDTH], line["predicted_lr"], color=colours[rule], lw=1.4, label=f"{rule} prediction")
    searched = optima.groupby(RULE) if RULE in optima else [("search", optima)]
    for (name, group), marker in zip(searched, "o^sDv"):
        ax.scatter(group[WIDTH], group[lr_column], marker=marker, s=60, color="black", zorder=5,
                   label=f"empirical optimum ({name})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width")
    ax.set_ylabel("optimal learning rate (hidden matrices)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


# --- reports: what the notebooks show and the command line writes ---------------------------

@dataclass
class Report:
    """What a report made of a study, by name: tidy tables (written as ``<name>.csv``), figures
    (``<name>.png``), and for each table or figure it could not make, why (``missing``)."""

    study: Path
    source: str  # "run folders" or "committed tables"
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, plt.Figure] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def add_table(self, name: str, table: pd.DataFrame, if_empty: str = "no run has the data") -> None:
        """Keep ``table`` as ``name`` (``if_empty`` says why there is none when it has no row).
        ``run_dir`` is dropped: a path on one machine, and these tables get committed."""
        if table.empty:
            self.missing[name] = if_empty
        else:
            self.tables[name] = table.drop(columns="run_dir", errors="ignore")

    def read_committed(self, names: Sequence[str]) -> None:
        """The tables ``<study>/analysis/<name>.csv`` that exist; the others are missing."""
        for name in names:
            path = self.study / "analysis" / f"{name}.csv"
            if path.is_file():
                self.tables[name] = pd.read_csv(path, dtype=ID_DTYPES)
            else:
                self.missing[name] = f"needs the run folders of {self.study} (absent) or a committed {path.name}"

    def draw(self, name: str, needs: str, plot: Callable[[pd.DataFrame], plt.Figure]) -> None:
        """Figure ``name``, drawn by ``plot`` from the table ``needs``, or why not."""
        if needs not in self.tables:
            self.missing[name] = self.missing.get(needs, f"no {needs} table")
            return
        try:
            self.figures[name] = plot(self.tables[needs])
        except AnalysisError as err:
            self.missing[name] = str(err)

    def save(self, out: Path) -> list[Path]:
        """Write every table and figure into ``out``; the figures are closed (a notebook can
        still display them)."""
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, table in self.tables.items():
            table.to_csv(out / f"{name}.csv", index=False)
            written.append(out / f"{name}.csv")
        return written + [plots.save_figure(fig, out / f"{name}.png") for name, fig in self.figures.items()]

    def show(self, *names: str) -> None:
        """In a notebook: each named table and figure; for one not made, why, and the study's
        committed PNG of it when there is one (labelled as such)."""
        from IPython.display import Image, display

        for name in names:
            if name in self.tables:
                display(self.tables[name].round(4))
            if name in self.figures:
                display(self.figures[name])
            elif name in self.missing:
                print(f"{name}: not made here: {self.missing[name]}")
                committed = self.study / "analysis" / f"{name}.png"
                if committed.is_file():
                    print(f"the committed figure ({committed}):")
                    display(Image(filename=str(committed)))


EARLY_TABLES = ("block_profiles", "probe_blocks", "early_share")
INSTABILITY_TABLES = ("output_change", "divergence", "grad_norm_traces")


def early_layer_report(study: str | Path, *, probe_samples: int = 64, bootstrap: int = 1000) -> Report:
    """Early-layer use (§5.1) of a study over ``mng.mode``. Tables: ``block_profiles`` (the
    trainer's per-block diagnostics), ``probe_blocks`` (block ablation on each completed run's
    EMA generator, ``probe_samples`` probes), ``early_share`` (``bootstrap`` resamples). Figures:
    ``block_profiles_training``, ``block_ablation_probe``, ``early_share``, and ``pca_maps`` (from
    the checkpoints, so only with run folders)."""
    study = Path(study)
    table = load_study_runs(study)
    report = Report(study, "committed tables" if table is None else "run folders")
    if table is None:
        report.read_committed(EARLY_TABLES)
        report.missing["pca_maps"] = f"drawn from the runs' checkpoints, and {study} has no run folders"
    else:
        report.add_table("block_profiles", block_profiles(table), "no eval tick logged g_block_ablation")
        try:
            effects = probe_runs(table, num=probe_samples)
        except AnalysisError as err:
            report.missing.update(dict.fromkeys(("probe_blocks", "early_share", "pca_maps"), str(err)))
        else:
            report.add_table("probe_blocks", probe_frame(table, effects))
            report.add_table("early_share", early_share_table(table, effects, n_boot=bootstrap))
            report.figures["pca_maps"] = plot_pca_maps(widest_pca_maps(table, effects))
    report.draw("block_profiles_training", "block_profiles", plot_block_profiles)
    report.draw("block_ablation_probe", "probe_blocks", lambda frame: plot_block_profiles(frame, value="value"))
    report.draw("early_share", "early_share", plot_early_share)
    return report


def instability_report(study: str | Path, *, coord_check: str | Path | None = None) -> Report:
    """Instability with width (§5.2) of a study over widths and LR rules. Tables:
    ``output_change``, ``divergence``, ``grad_norm_traces`` (each run's logged pre-clip norms) and
    ``coord_slopes`` (from ``coord_check``, default ``<study>/coord_check/coord_check.csv``).
    Figures: ``output_change``, ``divergence_rate``, ``divergence_step``, ``grad_norms``,
    ``coord_check``."""
    study = Path(study)
    table = load_study_runs(study)
    report = Report(study, "committed tables" if table is None else "run folders")
    if table is None:
        report.read_committed(INSTABILITY_TABLES)
    else:
        traces = stats_traces(table)
        report.add_table("output_change", output_change_by_width(traces),
                         "no eval tick logged g_output_change or d_logit_change")
        report.add_table("divergence", divergence_summary(table))
        norms = ["grad_norm_g", "grad_norm_d"]
        report.add_table("grad_norm_traces", traces[[*RUN_COLUMNS, "step", *norms]].dropna(subset=norms, how="all"),
                         "no stats line logged grad_norm_g or grad_norm_d")
    coord_path = Path(coord_check) if coord_check else study / "coord_check" / "coord_check.csv"
    if coord_path.is_file():
        coords = load_coord_check(coord_path)
        slopes = coord_slopes(coords).pivot_table(index=["net", "module"], columns="rule", values="slope")
        report.add_table("coord_slopes", slopes.reset_index().rename_axis(columns=None))
        report.figures["coord_check"] = plot_coord_check(coords)
    else:
        report.missing["coord_slopes"] = report.missing["coord_check"] = (
            f"no {coord_path}; make it with python -m gat.coord_check --widths 32 64 128 256 "
            f"--rules constant width_aware mup --steps 5 --out {coord_path.parent}")
    report.draw("output_change", "output_change", plot_output_change)
    report.draw("divergence_rate", "divergence", plots.divergence_heatmaps)
    report.draw("divergence_step", "divergence", plot_divergence)
    report.draw("grad_norms", "grad_norm_traces", plot_grad_norms)
    return report


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
