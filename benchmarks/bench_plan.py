"""Benchmark: the whole `python -m sweeps.launch GRID --dry-run` a user runs, on big grids.

Times the CLI as a subprocess (interpreter start, imports, grid parsing, expansion, hashing,
validation through contract.config and contract.model_shape, run-folder status reads and the printed table)
for a 4-axis grid of 10^4 points and one of 10^5, with 1,000 existing run folders, and reports
wall time and the child's peak resident memory. Targets on 2 cores: 10^4 points <= 8 s,
10^5 <= 60 s, memory <= 1 GiB.

    python benchmarks/bench_plan.py [--sizes 10000 100000] [--existing 1000]
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contract import rundir  # noqa: E402
from sweeps.plan import make_plan  # noqa: E402
from sweeps.spec import load_grid  # noqa: E402

TARGETS = {10_000: 8.0, 100_000: 60.0}  # seconds
MEMORY_TARGET_MB = 1024


def grid(points: int) -> dict:
    """10 widths x 10 LRs x 10 z_dims x (points / 1000) seeds."""
    return {
        "base": "gat/configs/fmnist.yaml",
        "set": {"train.steps": 100, "model.heads": 2},
        "axes": {
            "model.width": [32 + 16 * i for i in range(10)],
            "train.base_lr": [1e-4 * (1 + i) for i in range(10)],
            "model.z_dim": [16 + i for i in range(10)],
            "seed": list(range(points // 1000)),
        },
        "executor": {"kind": "local"},
    }


def measure(points: int, existing: int, tmp: Path) -> tuple[float, float, int]:
    """(seconds, peak MB of the child, planned runs) of one dry run."""
    grid_file = tmp / f"bench{points}.yaml"
    grid_file.write_text(yaml.safe_dump(grid(points), sort_keys=False))
    sweep = tmp / f"sweep{points}"
    for run in make_plan(load_grid(grid_file), sweep).runs[:existing]:  # setup, not timed
        run.dir.mkdir(parents=True)
        rundir.write_status(run.dir, "completed", 100)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "sweeps.launch", str(grid_file), "--dry-run", "--out", str(sweep)],
                         cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(f"dry run failed: {out.stderr.strip()}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far
    runs = int(out.stdout.strip().splitlines()[-1].split()[0])
    return elapsed, peak_mb, runs


def main(argv: list[str] | None = None) -> int:
    """Print one line per size; exit 1 if any target is missed."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=list(TARGETS))
    p.add_argument("--existing", type=int, default=1000)
    args = p.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for points in sorted(args.sizes):
            seconds, peak_mb, runs = measure(points, args.existing, Path(tmp))
            target = TARGETS.get(points)
            within = (target is None or seconds <= target) and peak_mb <= MEMORY_TARGET_MB
            ok &= within
            print(f"{runs:>7} points: {seconds:6.1f} s, peak {peak_mb:6.0f} MB "
                  f"(targets {target if target else '-'} s, {MEMORY_TARGET_MB} MB) {'ok' if within else 'MISSED'}",
                  flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
