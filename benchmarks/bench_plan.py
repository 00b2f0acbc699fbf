"""Benchmark: plan a 10,000-point grid with 1,000 existing run folders (target: under 2 s).

Planning = expand the grid, normalise and hash every point, name its folder, and read the
status of every run (folder listing, status.json, lease). Validation through gat.config and
gat.models is a separate step (`sweeps.launch.validate_plan`) and is not timed here.

    python benchmarks/bench_plan.py [--points-per-axis 10] [--existing 1000]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweeps.plan import make_plan, read_statuses  # noqa: E402
from sweeps.spec import parse_grid  # noqa: E402


def grid(n: int) -> dict:
    """A 4-axis grid with n values per axis (n**4 points)."""
    return {
        "base": {"model": {"depth": 4, "heads": 2}, "train": {"steps": 100}},
        "axes": {
            "model.width": [32 + 8 * i for i in range(n)],
            "train.base_lr": [1e-4 * (1 + i) for i in range(n)],
            "model.z_dim": [16 + i for i in range(n)],
            "seed": list(range(n)),
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figure; exit 1 if over the 2 s budget."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points-per-axis", type=int, default=10)
    p.add_argument("--existing", type=int, default=1000)
    args = p.parse_args(argv)
    spec = parse_grid(grid(args.points_per_axis))
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp)
        for run in make_plan(spec, sweep).runs[: args.existing]:  # setup, not timed
            run.dir.mkdir(parents=True)
            (run.dir / "status.json").write_text(json.dumps({"state": "completed", "step": 100}))
        start = time.perf_counter()
        plan = make_plan(spec, sweep)
        states = read_statuses(plan, 120.0)
        elapsed = time.perf_counter() - start
    counts = Counter(s.state for s in states.values())
    print(f"planned {len(plan.runs)} runs ({dict(counts)}) in {elapsed:.2f} s (budget 2 s)")
    return 0 if elapsed < 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
