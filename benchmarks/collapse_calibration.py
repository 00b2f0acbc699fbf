"""Calibrate the collapse rule (docs/collapse.md): replay `gat.train.CollapseWatch` over the FD
traces of run folders and print how often each (ratio, patience) pair fires.

    python benchmarks/collapse_calibration.py --healthy STUDY_OR_RUN ... [--collapsed RUN ...]
        [--collapsed-trace NAME=FD,FD,...] [--ratios 1.1 1.2 ...] [--patience 2 3 4]

`--healthy` folders (a study, whose runs/ is searched, or run folders) hold runs that did not
fail: a pair that fires on one of them is a false positive. `--collapsed` folders hold runs forced
into collapse (an absurd LR, or `train.d_lr_mult`) and trained with `train.collapse_patience=0` so
their whole trace is on disk: a pair that misses one of them is a false negative;
`--collapsed-trace` gives such a trace as numbers (e.g. a pilot recorded in docs/run_folder.md).
The folders are only read. Prints, per set, the distribution of each eval's FD over the best before it, the
largest ratio at which each patience still fires on each run, and the rate table.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from contract import rundir
from gat.train import CollapseWatch

DEFAULT_RATIOS = (1.1, 1.15, 1.2, 1.25, 1.3, 1.4, 1.5)
DEFAULT_PATIENCE = (2, 3, 4)


def run_folders(paths: list[Path]) -> list[Path]:
    """The run folders (those with a stats.jsonl) at or below each path, sorted."""
    found: set[Path] = set()
    for path in paths:
        if (path / rundir.STATS).is_file():
            found.add(path)
        else:
            found.update(p.parent for p in path.rglob(rundir.STATS))
    return sorted(found)


def fd_trace(run_dir: Path) -> list[tuple[int, dict[str, float]]]:
    """(step, metrics) of each eval line of a run, in order."""
    evals, _ = rundir.read_eval_stats(run_dir)
    return [(int(e["step"]), e["metrics"]) for e in evals]


def fires(trace: list[tuple[int, dict[str, float]]], ratio: float, patience: int) -> dict | None:
    """The trainer's own rule replayed on a trace: its collapse record, or None."""
    watch = CollapseWatch(ratio, patience)
    for step, metrics in trace:
        watch.update(step, metrics)
    return watch.fired


def parse_trace(text: str) -> tuple[str, list[tuple[int, dict[str, float]]]]:
    """NAME=FD,FD,... as (name, trace); the steps are the evals' ordinals."""
    name, _, values = text.partition("=")
    try:
        return name, [(i + 1, {"fd": float(v)}) for i, v in enumerate(values.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=FD,FD,..., got {text!r}") from None


def ratios_to_best(trace: list[tuple[int, dict[str, float]]]) -> list[float]:
    """Each eval's metric over the lowest before it (from the second eval on)."""
    values = [next(iter(m.values())) for _, m in trace]
    return [v / min(values[:i]) for i, v in enumerate(values) if i]


def firing_threshold(trace: list[tuple[int, dict[str, float]]], patience: int) -> float:
    """The largest ratio at which (ratio, patience) fires on this trace (1.0: never above its
    best for that long). The rule keeps its best fixed during a streak, so it fires iff some
    `patience` consecutive evals all exceed ratio × the lowest value before them: the threshold
    is the largest, over such windows, of the window's smallest ratio."""
    r = ratios_to_best(trace)
    windows = [min(r[i:i + patience]) for i in range(len(r) - patience + 1)]
    return max([1.0, *windows])


def report(name: str, traces: dict[str, list], ratios: tuple[float, ...], patience: tuple[int, ...]) -> None:
    """Print one set's ratio distribution, per-run thresholds and its rate table."""
    if not traces:
        print(f"{name}: no run folder with eval lines")
        return
    every = np.array([x for t in traces.values() for x in ratios_to_best(t)])
    print(f"\n{name}: {len(traces)} runs, {len(every)} eval ratios (FD / best before it)")
    q = np.quantile(every, [0.5, 0.9, 0.99]) if len(every) else [np.nan] * 3
    print(f"  ratio median {q[0]:.3f}  p90 {q[1]:.3f}  p99 {q[2]:.3f}  max {every.max():.3f}")
    print("  largest ratio that still fires, per run:  " + "  ".join(f"patience {p}" for p in patience))
    for run, trace in traces.items():
        print(f"  {run[:46]:46s}" + "".join(f"  {firing_threshold(trace, p):10.3f}" for p in patience))
    print("  fraction of runs flagged:  ratio " + " ".join(f"{r:6.3g}" for r in ratios))
    for p in patience:
        rates = [np.mean([fires(t, r, p) is not None for t in traces.values()]) for r in ratios]
        print(f"  {'':19s}patience {p}   " + " ".join(f"{x:6.3f}" for x in rates))


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, read the folders, print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--healthy", type=Path, nargs="+", default=[], help="studies or runs that did not fail")
    parser.add_argument("--collapsed", type=Path, nargs="+", default=[], help="runs forced into collapse")
    parser.add_argument("--collapsed-trace", type=parse_trace, nargs="+", default=[],
                        help="forced-collapse traces given as NAME=FD,FD,...")
    parser.add_argument("--ratios", type=float, nargs="+", default=list(DEFAULT_RATIOS))
    parser.add_argument("--patience", type=int, nargs="+", default=list(DEFAULT_PATIENCE))
    args = parser.parse_args(argv)
    if not (args.healthy or args.collapsed or args.collapsed_trace):
        parser.error("give --healthy and/or --collapsed folders (or --collapsed-trace)")
    sets = (("healthy (a flag is a false positive)", args.healthy, []),
            ("forced collapse (a miss is a false negative)", args.collapsed, args.collapsed_trace))
    for name, paths, given in sets:
        if paths or given:
            traces = {d.name: t for d in run_folders(paths) if (t := fd_trace(d))} | dict(given)
            report(name, traces, tuple(args.ratios), tuple(args.patience))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
