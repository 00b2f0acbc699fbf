"""Benchmark of the analysis layer: ``python benchmarks/bench_analysis.py [--runs N] [--evals N]``.

1. ``load_results`` on 1,000 synthetic run folders with 100 eval rows each (plus 4 log-only
   lines per eval, as the trainer writes them) in a temp dir. Target: < 3 s on 2 cores.
2. A 1,000-resample bootstrap power-law fit of a 6 sizes × 2 seeds study. Target: < 10 s.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from analysis.fit import bootstrap_power_law  # noqa: E402
from analysis.load import load_results  # noqa: E402
from tests.test_analysis_load import curve, write_run  # noqa: E402

WIDTHS = (384, 768, 1024, 1152)


def make_runs(root: Path, runs: int, evals: int) -> None:
    """``runs`` run folders under ``root``, each with ``evals`` eval rows every 100 steps."""
    steps = [100 * (k + 1) for k in range(evals)]
    for i in range(runs):
        width = WIDTHS[i % len(WIDTHS)]
        write_run(root / f"run{i:04d}", width=width, heads=width // 64, seed=i, log_every=25,
                  evals=curve(steps, 200.0, 5.0 + i % 7))


def timed(label: str, target_s: float, func) -> float:
    """Run ``func`` once, print its time against the target, return the seconds."""
    start = time.perf_counter()
    result = func()
    seconds = time.perf_counter() - start
    verdict = "ok" if seconds < target_s else "OVER TARGET"
    print(f"{label}: {seconds:.2f} s (target < {target_s:g} s) {verdict}")
    return result


def main() -> int:
    """Build the synthetic inputs, then time both steps."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--evals", type=int, default=100)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        make_runs(Path(tmp), args.runs, args.evals)
        print(f"wrote {args.runs} run folders in {time.perf_counter() - start:.1f} s (setup, not timed)")
        table = timed(f"load_results ({args.runs} runs x {args.evals} evals)", 3.0, lambda: load_results([tmp]))
        assert len(table) == args.runs * args.evals, len(table)
        timed("load_results again (warm file cache)", 3.0, lambda: load_results([tmp]))

    rng = np.random.default_rng(0)
    x = np.repeat(np.geomspace(1.4, 120.0, 6), 2)
    y = 50 * x**-0.45 * np.exp(rng.normal(0, 0.05, len(x)))
    runs = np.arange(len(x))
    fit = timed(f"bootstrap power-law fit ({args.resamples} resamples, 12 runs)", 10.0,
                lambda: bootstrap_power_law(x, y, runs, n_resamples=args.resamples))
    print(f"  b = {fit.fit.b:.3f}, 95% CI {fit.ci['b'][0]:.3f}-{fit.ci['b'][1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
