"""Early-layer use in the generator (paper §5.1), per MNG mode, as a library: does G use its
early blocks, with and without multi-level noise guidance?

- ``block_profiles``: the trainer's per-block diagnostics (ablation effect, residual-update
  ratio) at each run's last eval tick, from stats.jsonl (``contract.rundir``);
- ``probe_runs``: the same measured on the EMA generator of each run's newest checkpoint with a
  larger probe set, in latent space and decoded pixels, plus per-block feature PCA maps
  (through ``gat.probe``, the trainer's public probing API: the one place here that loads torch);
- ``early_share``: the share of the total ablation effect carried by the first half of the
  blocks, with a bootstrap interval over probe samples.

``early_layer_report`` makes a study's tables and every figure they allow, from its run folders
when they are on disk, else from the tables committed in ``STUDY_DIR/analysis/``; the
early_layer_use notebook shows it and ``python -m analysis.ablations`` writes it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from tqdm import tqdm

from analysis.load import AnalysisError
from analysis.report import Report, open_report
from analysis.traces import MNG, RUN_COLUMNS, WIDTH, runs
from contract import rundir

MNG_ORDER = ("exp", "lin", "msg", "off")


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
    # Probing runs G on its checkpoint, which needs torch and the model code: the one import of
    # the trainer in analysis/, made here so that importing this module (and the committed
    # tables' path, which never probes) stays torch-free.
    from gat.probe import probe_run

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
    """The MNG modes present in ``values``, in ``MNG_ORDER`` (a colour per mode stays put
    across figures), then any other mode sorted."""
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


EARLY_TABLES = ("block_profiles", "probe_blocks", "early_share")


def early_layer_report(study: str | Path, *, probe_samples: int = 64, bootstrap: int = 1000) -> Report:
    """Early-layer use (§5.1) of a study over ``mng.mode``. Tables: ``block_profiles`` (the
    trainer's per-block diagnostics), ``probe_blocks`` (block ablation on each completed run's
    EMA generator, ``probe_samples`` probes), ``early_share`` (``bootstrap`` resamples). Figures:
    ``block_profiles_training``, ``block_ablation_probe``, ``early_share``, and ``pca_maps`` (from
    the checkpoints, so only with run folders)."""
    report, table = open_report(study)
    if table is None:
        report.read_committed(EARLY_TABLES)
        report.missing["pca_maps"] = f"drawn from the runs' checkpoints, and {report.study} has no run folders"
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
