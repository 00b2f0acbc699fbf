"""Benchmark: one study launched unpacked and packed under the same executor, back to back.

Writes two copies of the grid (its `base` made absolute so they run from any folder): as it is,
and with `resources.pack.runs_per_job: N` and `cpus_per_task` multiplied by N, so every run
keeps the same thread count. Launches each with `--wait` into its own sweep folder and prints
the wall time, the number of allocations (distinct SLURM job and array-task ids over the runs'
attempts), and whether every evaluation of every run gave the same metric, bit for bit.

    python benchmarks/pack_study.py [scaling_grid.yaml] [--runs-per-job 2] [--executor slurm] [--out DIR]

Nothing else should run on the machine meanwhile: the two wall times are only comparable then.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contract import rundir  # noqa: E402
from sweeps.spec import load_grid, resolve_grid_path  # noqa: E402


def variant(grid_path: Path, runs_per_job: int) -> dict[str, Any]:
    """The grid's YAML with an absolute base, packed `runs_per_job` to a job (1: unpacked)."""
    data = yaml.safe_load(grid_path.read_text())
    data["base"] = load_grid(grid_path).base  # the resolved trainer config, inline
    if runs_per_job > 1:
        resources = data.setdefault("resources", {})
        resources["cpus_per_task"] = int(resources.get("cpus_per_task", 1)) * runs_per_job
        resources["pack"] = {"runs_per_job": runs_per_job}
    return data


def launch(grid: dict[str, Any], name: str, out: Path, executor: str) -> float:
    """Launch the grid into out/name and wait; returns the wall seconds."""
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    start = time.monotonic()
    with open(out / f"{name}.log", "w") as log:
        subprocess.run([sys.executable, "-m", "sweeps.launch", str(path), "--out", str(out / name),
                        "--executor", executor, "--wait"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.monotonic() - start


def runs(sweep: Path) -> dict[str, Path]:
    """Run folders by name."""
    return {p.name: p for p in sorted((sweep / "runs").iterdir()) if p.is_dir()}


def allocations(sweep: Path) -> int:
    """Distinct (SLURM job id, array task id) pairs over every run's attempts; for a local
    executor, distinct job ids as the sweep engine's events record them."""
    seen = set()
    for run_dir in runs(sweep).values():
        provenance = rundir.read_json(run_dir / rundir.PROVENANCE) or {}
        for attempt in provenance.get("attempts", []):
            if attempt.get("slurm_job_id") is not None:
                seen.add((attempt["slurm_job_id"], attempt.get("slurm_array_task_id")))
        if not provenance.get("attempts") or all(a.get("slurm_job_id") is None for a in provenance["attempts"]):
            seen.update(("local", e.get("job_id")) for e in rundir.read_events(run_dir) if e.get("job_id"))
    return len(seen)


TIMING_KEYS = ("wall_s", "sec_per_step", "images_per_s", "peak_mem_mb")


def evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """Each evaluation line of stats.jsonl without its timings: step, losses, metrics, diagnostics."""
    evals, _ = rundir.read_eval_stats(run_dir)
    return [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in evals]


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", nargs="?", default="scaling_grid.yaml")
    parser.add_argument("--runs-per-job", type=int, default=2)
    parser.add_argument("--executor", default="slurm", choices=("slurm", "local"))
    parser.add_argument("--out", type=Path, default=None, help="folder for both studies (default: a new temp folder)")
    parser.add_argument("--compare-only", action="store_true",
                        help="launch nothing: compare the two studies already in --out")
    args = parser.parse_args()
    if args.compare_only and args.out is None:
        parser.error("--compare-only needs --out")
    out = args.out or Path(tempfile.mkdtemp(prefix="pack_study_"))
    out.mkdir(parents=True, exist_ok=True)
    grid_path = resolve_grid_path(args.grid)

    report_path = out / "pack_study.json"
    report: dict[str, Any] = {"grid": str(grid_path), "executor": args.executor, "out": str(out)}
    if args.compare_only:
        report = json.loads(report_path.read_text())
    for name, n in (("unpacked", 1), (f"packed{args.runs_per_job}", args.runs_per_job)):
        if args.compare_only:
            continue
        seconds = launch(variant(grid_path, n), name, out, args.executor)
        report[name] = {"wall_s": round(seconds, 1), "runs": len(runs(out / name)),
                        "allocations": allocations(out / name)}
        print(f"{name}: {report[name]['runs']} runs in {report[name]['allocations']} allocations, {seconds:.1f} s",
              flush=True)

    unpacked, packed = runs(out / "unpacked"), runs(out / f"packed{args.runs_per_job}")
    if unpacked.keys() != packed.keys():
        print(f"error: the two studies planned different runs: {sorted(unpacked.keys() ^ packed.keys())}")
        return 1
    differ = []
    for name in unpacked:
        a, b = evaluations(unpacked[name]), evaluations(packed[name])
        if a != b or not a:
            differ.append({"run": name, "unpacked": a, "packed": b})
        else:
            print(f"  {name}: " + ", ".join(f"step {e['step']} {json.dumps(e['metrics'])}" for e in a))
    report["identical_runs"] = len(unpacked) - len(differ)
    report["differing_runs"] = differ
    print(f"metrics bit-identical in {report['identical_runs']} of {len(unpacked)} runs")
    for d in differ:
        print(f"  differs: {d['run']}: unpacked {d['unpacked']} packed {d['packed']}")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {report_path}")
    return 0 if not differ else 1


if __name__ == "__main__":
    sys.exit(main())
