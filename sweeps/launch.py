"""`python -m sweeps.launch GRID.yaml`: plan a grid, check it, and submit what is left to run.

Relaunching is safe: run folders are the source of truth. Completed, diverged and collapsed runs are
skipped, interrupted ones resume from their checkpoint, failed ones rerun only with
`--rerun-failed`, and runs that a live job holds or has queued are left alone. Two launches at
once cannot train one point twice: each job takes the run's lease before training.

    python -m sweeps.launch scaling_grid.yaml                 # bundled grid, studies/scaling_grid/
    python -m sweeps.launch my_grid.yaml --dry-run            # table with FLOPs and GPU-hours
    python -m sweeps.launch my_grid.yaml --only 'w384' --wait # a subset, then watch it
    python -m sweeps.launch my_grid.yaml --executor local --set train.steps=200

The launcher returns once jobs are submitted (`--wait` watches until every run is final; the
debug executor always runs the jobs here, in this process). `GATSCALE_TRAINER` names the module
jobs run with `python -m` (default `gat.train`; tests use a stub).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from gat import cli
from gat import config as gat_config
from gat import rundir
from gat.errors import UserError
from sweeps import costs, executors, manifest, resources
from sweeps import lease as leases
from sweeps.job import RunJob, RunTask, cancel_requested, clear_cancel
from sweeps.plan import FINAL, Plan, PlannedRun, RunStatus, flatten, make_plan, read_statuses
from sweeps.status import watch
from sweeps.spec import GridError, GridSpec, Point, default_sweep_dir, load_grid, only_filter, validate_points


TABLE_ROWS = 300  # a 10^6-point dry run prints these and a count, not a million lines


def select(plan: Plan, only: str | None) -> list[PlannedRun]:
    """Runs whose name or ID matches `only` (a regular expression), or all."""
    wanted = only_filter(only)
    return [r for r in plan.runs if wanted(r.name, r.run_id)]


def queued_runs(sweep_dir: Path) -> dict[str, str]:
    """Run id -> job id for runs a recorded job still has queued or running."""
    data = manifest.read(sweep_dir) or {}
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for job in data.get("jobs", []):
        by_kind.setdefault(job.get("executor", "slurm"), []).append(job)
    out: dict[str, str] = {}
    for kind, jobs in by_kind.items():
        live = executors.active_jobs(kind, [j["job_id"] for j in jobs])
        for job in jobs:
            if job["job_id"] in live:
                out.update({rid: job["job_id"] for rid in job["run_ids"]})
    return out


def decide(state: str, queued: bool, rerun_failed: bool) -> str:
    """What the launcher does with a run: `submit`, or why it skips."""
    if state in FINAL:
        return f"skip ({state})"
    if state == "running":
        return "skip (running)"
    if state == "failed":
        # A live job that already failed this run will not try it again (its worker may still
        # be draining others), so being listed in one does not block --rerun-failed; the run
        # lease keeps it from ever training twice at once.
        return "submit" if rerun_failed else "skip (failed; --rerun-failed reruns it)"
    if queued:
        return "skip (queued)"
    return "submit"


def validate_plan(plan: Plan) -> None:
    """Every run's values through gat.config (each axis value once, each combination of the
    interacting keys once), then each distinct model shape through gat.models.describe (which
    catches what only building the nets can, e.g. more MNG levels than blocks); also checks the
    fast normalisation agrees with the trainer's."""
    points = [Point(r.coords, r.overrides) for r in plan.runs]
    for index, cfg in validate_points(plan.spec, points).items():
        run = plan.runs[index]
        resolved = flatten(gat_config.to_dict(cfg))
        if resolved != run.flat:
            diff = sorted(k for k in set(resolved) | set(run.flat) if resolved.get(k) != run.flat.get(k))
            raise GridError(f"{run.name}: internal error, plan and trainer config disagree on {diff}")
        try:
            costs.model_stats(run.flat)
        except gat_config.ConfigError as err:
            coords = ", ".join(f"axis {k}={v!r}" for k, v in run.coords.items())
            raise GridError(f"{coords}: {err}") from err


def snapshot_code(dest: Path) -> Path:
    """Copy the repo's tracked and untracked-but-not-ignored files to `dest` (queued jobs then
    run the code as it was at submission)."""
    checkout = rundir.source_checkout()
    if checkout is None:
        raise GridError("executor.snapshot_code needs gatscale to run from its git checkout, not an install")
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=checkout, capture_output=True, timeout=60,
    )
    if listing.returncode != 0:
        raise GridError(f"executor.snapshot_code: git ls-files failed in {checkout}")
    for rel in filter(None, listing.stdout.decode().split("\0")):
        source = checkout / rel
        if source.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    return dest


def _fmt(value: float | None, spec: str) -> str:
    return "?" if value is None else format(value, spec)


def dry_run_table(plan: Plan, rows: list[tuple[PlannedRun, RunStatus, str, resources.Resources]],
                  estimate: resources.Estimate) -> str:
    """The --dry-run report: one line per selected run (the first TABLE_ROWS), then totals. Sizes
    and hours to 3 significant figures (a CPU grid's models are 1e-5 GFLOPs); hours are CPU-hours
    when no run of the grid asks for a GPU."""
    unit = "GPU" if any(res.gpus for *_, res in rows) else "CPU"
    header = f"{'run':<52} {'state':<12} {'params':>9} {'GFLOPs':>8} {'train FLOPs':>11} {'GPUs':>4} {unit + '-h':>8}  action"
    lines = [header, "-" * len(header)]
    total_flops = total_hours = 0.0
    submit_hours = 0.0
    unknown = False
    for run, status, action, res in rows:
        stats = costs.model_stats(run.flat)
        flops = costs.training_flops(run.flat, stats)
        hours = costs.device_hours(flops, estimate)
        unknown |= hours is None
        total_flops += flops or 0.0
        total_hours += hours or 0.0
        if action == "submit":
            submit_hours += hours or 0.0
        if len(lines) - 2 >= TABLE_ROWS:
            continue  # counted in the totals, not printed
        params = None if stats is None else stats["params"] / 1e6
        lines.append(
            f"{run.name[:52]:<52} {status.state:<12} {_fmt(params, '8.2f') + 'M':>9} "
            f"{_fmt(None if stats is None else stats['gflops'], '8.3g'):>8} {_fmt(flops, '11.2e'):>11} "
            f"{res.gpus * res.nodes:>4} {_fmt(hours, '8.3g'):>8}  {action}"
        )
    n_submit = sum(1 for _, _, a, _ in rows if a == "submit")
    groups = len({res for _, _, a, res in rows if a == "submit"})
    if len(rows) > TABLE_ROWS:
        lines.append(f"... {len(rows) - TABLE_ROWS} more runs not shown (--only REGEX lists a subset)")
    lines.append("-" * len(header))
    lines.append(
        f"{len(rows)} runs ({plan.merged} duplicate points merged); would submit {n_submit} in {groups} "
        f"array job(s); total {total_flops:.2e} training FLOPs, {total_hours:.3g} {unit}-hours "
        f"({submit_hours:.3g} to submit) at {estimate.device_tflops:g} TFLOP/s x {estimate.mfu:g} MFU"
        + ("; '?' = gat.models.describe unavailable" if unknown else "")
    )
    return "\n".join(lines)


def _plan_row(run: PlannedRun, estimate: resources.Estimate) -> dict[str, Any]:
    """One run of `--dry-run --json`: identity, budget, solved steps, size and cost."""
    flops = _estimated_flops(run) or None
    return {"run_id": run.run_id, "name": run.name, "budget": run.budget, "train_flops": flops,
            "steps": run.flat["train.steps"], "eval_every": run.flat["eval.every"],
            "device_hours": costs.device_hours(flops, estimate),
            **{key: run.flat[key] for key in ("model.width", "model.depth", "model.heads", "model.patch", "seed")}}


def budget_table(plan: Plan, runs: list[PlannedRun], estimate: resources.Estimate) -> str:
    """The isoFLOP part of --dry-run: per budget its sizes, solved steps, achieved FLOPs (and
    their miss) and estimated time; then the dropped cells with their reasons."""
    lines = ["", f"{'budget':>9} {'size':<16} {'steps':>8} {'train FLOPs':>11} {'miss':>7} {'hours':>7}  runs"]
    cells: dict[tuple[float, str], list[PlannedRun]] = {}
    for run in runs:
        size = "-".join(f"{k[6]}{run.flat[k]}" for k in ("model.width", "model.depth", "model.heads", "model.patch"))
        cells.setdefault((run.budget, size), []).append(run)
    for (budget, size), group in sorted(cells.items(), key=lambda item: (item[0][0], -item[1][0].flat["train.steps"])):
        flops = _estimated_flops(group[0])
        hours = costs.device_hours(flops, estimate)
        lines.append(f"{budget:9.2e} {size:<16} {group[0].flat['train.steps']:>8} {flops:11.3e} "
                     f"{flops / budget - 1:+7.2%} {_fmt(hours and hours * len(group), '7.2f')}  {len(group)}")
    total = sum(costs.device_hours(_estimated_flops(r), estimate) or 0.0 for r in runs)
    lines.append(f"{len(cells)} cells, {len(runs)} runs, about {total:.2f} device-hours in all (runs one at a time)")
    for budget, coords, reason in plan.dropped:
        lines.append(f"dropped: budget {budget:.2e}, {', '.join(f'{k}={v}' for k, v in coords.items())}: {reason}")
    return "\n".join(lines)


def build_jobs(kind: str, runs: list[PlannedRun], spec: GridSpec, common: dict[str, Any]) -> list[RunJob]:
    """SLURM: one job (array task) per run. Local: `array_parallelism` workers sharing the list
    (each starts at a different offset and claims runs by lease). Debug: one job for all.
    `common` holds RunJob's keyword arguments."""
    tasks = [RunTask(r.run_id, r.name, str(r.dir.resolve()), r.config()) for r in runs]
    if kind == "slurm":
        return [RunJob([t], **common) for t in tasks]
    workers = 1 if kind == "debug" else min(spec.executor.array_parallelism, len(tasks))
    return [RunJob(tasks[i:] + tasks[:i], **common) for i in range(workers)]


def launch(args: argparse.Namespace) -> int:
    """The CLI's work; returns the exit status."""
    if args.parallelism is not None and args.parallelism < 1:
        raise GridError(f"--parallelism must be >= 1 (jobs in flight at once), got {args.parallelism}")
    spec = load_grid(args.grid, gat_config.parse_set(args.set) if args.set else None)
    if args.executor:
        spec.executor.kind = args.executor
    if args.parallelism is not None:
        spec.executor.array_parallelism = args.parallelism
    sweep_dir = Path(args.out) if args.out else default_sweep_dir(spec.name)
    defaults, rules, estimate = resources.parse(spec.resources)
    plan = make_plan(spec, sweep_dir)
    validate_plan(plan)
    chosen = select(plan, args.only)
    if not chosen:
        raise GridError(f"--only {args.only!r} matches none of the {len(plan.runs)} runs")
    statuses = read_statuses(plan, spec.executor.lease_stale_s)
    queued = queued_runs(sweep_dir) if (sweep_dir / manifest.MANIFEST).exists() else {}
    rows = []
    for run in chosen:
        status = statuses[run.run_id]
        res = resources.resolve(run.flat, defaults, rules, stats=lambda r=run: costs.model_stats(r.flat) or {})
        # A cancelled run's old job skips it or has stopped it: it counts as not queued.
        in_queue = run.run_id in queued and not cancel_requested(run.dir)
        rows.append((run, status, decide(status.state, in_queue, args.rerun_failed), res))
    if args.dry_run:
        if args.json:
            print(json.dumps([_plan_row(run, estimate) for run, _, _, _ in rows], indent=1))
            return 0
        print(dry_run_table(plan, rows, estimate))
        if spec.budgets is not None:
            print(budget_table(plan, [run for run, _, _, _ in rows], estimate))
        return 0

    kind = executors.resolve_kind(spec.executor.kind)
    if kind == "slurm" and not executors.slurm_available():
        raise GridError("executor slurm: no SLURM controller answers here (`sinfo` failed); "
                        "use --executor local, or launch where the cluster is")
    launch_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    to_submit = [(run, res) for run, _, action, res in rows if action == "submit"]
    earlier = _record_plan(plan, sweep_dir)
    if earlier:
        print(f"note: {earlier} run(s) recorded in {sweep_dir} by earlier launches are not in this grid "
              "(its points or base config changed); analysis includes them: filter with "
              "plot_scaling --where, or launch into a fresh --out")
    skipped = _count(action for _, _, action, _ in rows if action != "submit")
    print(f"{sweep_dir}: {len(rows)} runs selected; {len(to_submit)} to submit"
          + (f"; {', '.join(f'{n} {a}' for a, n in skipped.items())}" if skipped else ""))
    if not to_submit:
        return _watch(plan, chosen, sweep_dir, launch_id, set()) if args.wait else 0

    code_root = str(rundir.SOURCE_ROOT)
    if spec.executor.snapshot_code:
        code_root = str(snapshot_code(sweep_dir.resolve() / "code" / launch_id))
    common = dict(code_root=code_root, retries=spec.executor.retries, rerun_failed=args.rerun_failed,
                  stale_s=spec.executor.lease_stale_s, heartbeat_s=spec.executor.lease_heartbeat_s,
                  launch_id=launch_id, trainer=os.environ.get("GATSCALE_TRAINER", "gat.train"))
    groups: dict[resources.Resources, list[PlannedRun]] = {}
    # Longest first: with limited parallelism, a big run started last sets the sweep's end.
    for run, res in sorted(to_submit, key=lambda item: -_estimated_flops(item[0])):
        groups.setdefault(res, []).append(run)
    for run, _ in to_submit:  # submitting a run again withdraws an earlier sweeps.cancel
        clear_cancel(run.dir)
    submitted = []
    for res, runs in groups.items():
        fns = build_jobs(kind, runs, spec, {**common, "cpus_per_task": res.cpus_per_task})
        # a local worker drains its share of the list one run after another
        timeout = res.timeout_min * math.ceil(len(runs) / len(fns))
        ex = executors.make_executor(kind, sweep_dir.resolve() / ".submitit", spec.executor, res,
                                     name=f"gatscale-{spec.name}", code_root=code_root, timeout_min=timeout)
        jobs = executors.submit(kind, ex, fns, code_root)
        entries = [{"job_id": job.job_id, "run_ids": [t.run_id for t in fn.tasks], "executor": kind,
                    "launch": launch_id, "submitted": manifest.utc_now(), "resources": vars(res)}
                   | ({"process_start": leases.process_start(int(job.job_id))} if kind == "local" else {})
                   for job, fn in zip(jobs, fns)]
        manifest.update(sweep_dir, lambda data, e=entries: data.setdefault("jobs", []).extend(e))
        submitted.extend(jobs)
        print(f"submitted {len(runs)} run(s) as {len(jobs)} {kind} job(s) "
              f"[{res.gpus} GPU(s), {res.timeout_min} min]: {', '.join(j.job_id for j in jobs[:8])}"
              + (" ..." if len(jobs) > 8 else ""))
    if kind == "debug":
        for job in submitted:
            job.exception()  # runs the job here; failures are in the run folders (and not raised)
    if args.wait or kind == "debug":
        return _watch(plan, chosen, sweep_dir, launch_id, {run.run_id for run, _ in to_submit})
    return 0


def _estimated_flops(run: PlannedRun) -> float:
    return costs.training_flops(run.flat, costs.model_stats(run.flat)) or 0.0


def _record_plan(plan: Plan, sweep_dir: Path) -> int:
    """Add the plan's runs to the manifest; returns how many recorded runs the plan lacks."""
    commit, _ = rundir.git_state()
    entries = [{"run_id": r.run_id, "name": r.name, "dir": f"runs/{r.name}", "coords": r.coords,
                "overrides": r.overrides} for r in plan.runs]
    planned = {r.run_id for r in plan.runs}

    def change(data: dict[str, Any]) -> None:
        data.setdefault("created", manifest.utc_now())
        data.update(grid_file=_grid_file(plan.spec.path),
                    grid=plan.spec.text, git_commit=commit, updated=manifest.utc_now())
        manifest.merge_runs(data, entries)

    data = manifest.update(sweep_dir, change)
    return sum(r["run_id"] not in planned for r in data["runs"])


def _grid_file(path: Path | None) -> str | None:
    """The grid's path for the manifest: relative to gatscale's source for a bundled grid (so a
    committed manifest names no machine's folders), else absolute."""
    if path is None:
        return None
    path = path.resolve()
    return str(path.relative_to(rundir.SOURCE_ROOT)) if path.is_relative_to(rundir.SOURCE_ROOT) else str(path)


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def _watch(plan: Plan, runs: list[PlannedRun], sweep_dir: Path, launch_id: str, submitted: set[str]) -> int:
    """Watch until every run is final (or nothing is left queued); 1 if any failed."""

    states = watch(sweep_dir, [r.run_id for r in runs], plan.spec.executor.lease_stale_s,
                   launch_id=launch_id, submitted=submitted,
                   planned={r.run_id: int(r.flat["train.steps"]) for r in runs})
    # The analysis is its own step (data flows one way); say exactly how to take it.
    print(f"next: python -m analysis.plot_scaling {sweep_dir}   # tables, fits and plots in {sweep_dir / 'analysis'}")
    return 1 if any(s == "failed" for s in states.values()) else 0


def parser() -> argparse.ArgumentParser:
    """The launcher's command line."""
    p = cli.Parser("sweeps.launch", __doc__)
    p.add_argument("grid", help="grid YAML: a path, or a bundled grid's name (scaling_grid.yaml)")
    p.add_argument("--out", help="sweep folder to write (default studies/<grid name>/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override for every point (repeatable)")
    p.add_argument("--only", metavar="REGEX", help="only runs whose name or id matches")
    p.add_argument("--dry-run", action="store_true", help="print the plan with costs; submit and write nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON, one object per run")
    p.add_argument("--rerun-failed", action="store_true", help="also rerun runs whose state is failed")
    p.add_argument("--executor", choices=("auto", "slurm", "local", "debug"), help="override executor.kind")
    p.add_argument("--parallelism", type=int, help="jobs in flight at once (overrides executor.array_parallelism)")
    p.add_argument("--wait", action="store_true", help="watch with a progress bar until every run is final")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; grid and config errors print one line and return 2 (nothing is written), a
    full or read-only sweep folder one line naming it and 1."""
    args = parser().parse_args(argv)

    def body() -> int:
        try:
            return launch(args)
        except OSError as err:
            if err.filename is None:  # a failed write() names no file: name the folder
                err.filename = str(Path(args.out) if args.out else default_sweep_dir(load_grid(args.grid).name))
            if isinstance(err, (FileExistsError, FileNotFoundError, NotADirectoryError)):  # a bad --out
                raise UserError(f"cannot write the sweep folder ({err.filename}): {err.strerror or err}") from err
            err.add_note("cannot write the sweep folder")  # full or read-only: cli.run exits 1
            raise

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
