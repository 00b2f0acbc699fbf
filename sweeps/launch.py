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
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract import cli
from contract import config as gat_config
from contract.errors import ConfigError
from contract import rundir
from contract.errors import UserError
from sweeps import costs, executors, manifest, resources
from sweeps.plan import Dropped, Plan, PlannedRun, PlanStream, RunStatus, budget_points, make_plan, status_reader
from sweeps.status import watch
from sweeps.spec import GridError, GridSpec, Point, default_sweep_dir, load_grid, only_filter, validate_points
from sweeps.submit import SubmittedGroup, Submitter, new_launch_id


TABLE_ROWS = 300  # a 10^6-point dry run prints these and a count, not a million lines
# A run, its state, what the launcher does with it, and its resources.
Row = tuple[PlannedRun, RunStatus, str, resources.Resources]


def select(runs: Iterable[PlannedRun], only: str | None) -> Iterator[PlannedRun]:
    """Runs whose name or ID matches `only` (a regular expression), or all, in plan order. When
    none does, a GridError once `runs` is exhausted: before any output of a caller that prints
    only what it has been given."""
    wanted = only_filter(only)
    total = chosen = 0
    for run in runs:
        total += 1
        if wanted(run.name, run.run_id):
            chosen += 1
            yield run
    if not chosen:
        raise GridError(f"--only {only!r} matches none of the {total} runs")


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
    if state in rundir.FINAL_STATES:
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


def validate_plan(spec: GridSpec) -> None:
    """Every point's values through contract.config (each axis value once, each combination of the
    interacting keys once), then each distinct model shape through contract.model_shape.describe (which
    catches what only building the nets can, e.g. more MNG levels than blocks). Run before the
    plan is walked, so that a bad value is blamed on its own axis.

    The grid's points are expanded twice rather than held: once to validate, once to pick out
    the representatives `validate_points` names by index. Expanding needs no ids or folders, so
    both cost little next to the plan's own walk. (Duplicate points, which the plan merges, are
    validated too: their config is one an earlier point already has.)"""
    checked = validate_points(spec, (point for point, _ in budget_points(spec)))
    last = max(checked)
    for index, (point, _) in enumerate(budget_points(spec)):
        if index in checked:
            _check_models(point, checked[index])
        if index == last:
            break


def _check_models(point: Point, cfg: gat_config.RunConfig) -> None:
    """A validated point's models build (contract.model_shape.describe, through sweeps.costs)."""
    try:
        costs.model_stats(gat_config.to_flat(cfg))
    except ConfigError as err:
        where = ", ".join(f"axis {k}={v!r}" for k, v in point.coords.items()) or "base config"
        raise GridError(f"{where}: {err}") from err


def plan_rows(runs: Iterable[PlannedRun], spec: GridSpec, sweep_dir: Path, defaults: resources.Resources,
              rules: list[tuple[dict[str, Any], dict[str, Any]]], rerun_failed: bool) -> Iterator[Row]:
    """Each run with its state, what the launcher does with it, and its resources, as `runs`
    yields them. Only the run folders that exist are read (`status_reader`)."""
    status_of = status_reader(sweep_dir, spec.executor.lease_stale_s)
    queued = queued_runs(sweep_dir) if (sweep_dir / manifest.MANIFEST).exists() else {}
    for run in runs:
        status = status_of(run)
        res = resources.resolve(run.flat, defaults, rules, stats=lambda r=run: costs.model_stats(r.flat))
        # A cancelled run's old job skips it or has stopped it: it counts as not queued.
        in_queue = run.run_id in queued and not rundir.cancel_requested(run.dir)
        yield run, status, decide(status.state, in_queue, rerun_failed), res


@dataclass
class PackPlan:
    """The jobs a packed grid's launch would make of the runs it submits (`resources.packs`, in the
    launcher's order: longest first), and what they hold: the allocated device-hours with packing
    (a pack holds its job's devices until its longest run ends, its runs assumed not to slow each
    other) and without it (each run alone on its share: one GPU, or `cpus_per_task // pack` cores)."""

    index: dict[str, int] = field(default_factory=dict)  # run id -> pack (its job's index)
    runs: int = 0
    jobs: int = 0
    packed_hours: float = 0.0
    unpacked_hours: float = 0.0

    @classmethod
    def of(cls, rows: Iterable[Row], estimate: resources.Estimate) -> PackPlan:
        """The packs of the rows to submit; holds each one's id, hours and resources, not its run."""
        chosen = [((run.run_id, _estimated_flops(run)), res) for run, _, action, res in rows if action == "submit"]
        chosen.sort(key=lambda item: -item[0][1])  # as `launch` orders them, so its packs are these
        plan = cls(runs=len(chosen))
        for res, packs in resources.packs(chosen):
            job_devices = res.gpus * res.nodes or res.cpus_per_task
            run_devices = max(1, res.gpus // res.pack) * res.nodes if res.gpus else res.cpus_per_task // res.pack
            for pack in packs:
                plan.index.update((rid, plan.jobs) for rid, _ in pack)
                plan.jobs += 1
                hours = [costs.device_hours(flops, estimate) for _, flops in pack]
                plan.packed_hours += max(hours) * job_devices
                plan.unpacked_hours += sum(hours) * run_devices
        return plan

    def render(self, unit: str) -> str:
        """The packing line of the dry run's totals."""
        return (f"packing: {self.runs} runs to submit in {self.jobs} job(s), {self.runs - self.jobs} allocation(s) "
                f"saved; allocated {unit}-hours {self.packed_hours:.3g} packed vs {self.unpacked_hours:.3g} unpacked "
                "(a pack holds its devices until its longest run ends; its runs are assumed not to slow each other)")


@dataclass
class DryRunTable:
    """The --dry-run report, added up as the rows stream past: a line for each of the first
    TABLE_ROWS runs, then totals over all of them. `params` counts G and D; `G GFLOPs` is the
    generator's forward GFLOPs per image, the x axis of the fits. Sizes and hours to 3 significant
    figures (a CPU grid's models are 1e-5 GFLOPs); hours are CPU-hours when no run of the grid asks
    for a GPU."""

    estimate: resources.Estimate
    shown: list[str] = field(default_factory=list)  # the first TABLE_ROWS lines
    runs: int = 0
    submit: int = 0
    flops: float = 0.0
    hours: float = 0.0
    submit_hours: float = 0.0
    gpus: bool = False  # some run asks for a GPU: hours are GPU-hours
    groups: set[resources.Resources] = field(default_factory=set)  # one array job per resources to submit
    packs: PackPlan | None = None  # a packed grid's jobs: each line then ends with its run's pack

    def add(self, run: PlannedRun, status: RunStatus, action: str, res: resources.Resources) -> None:
        """Count one row in the totals, and keep its line while fewer than TABLE_ROWS are."""
        stats = costs.model_stats(run.flat)
        flops = costs.training_flops(run.flat, stats)
        hours = costs.device_hours(flops, self.estimate)
        self.runs += 1
        self.gpus |= bool(res.gpus)
        self.flops += flops
        self.hours += hours
        if action == "submit":
            self.submit += 1
            self.submit_hours += hours
            self.groups.add(res)
        if len(self.shown) < TABLE_ROWS:
            params = stats["params"] / 1e6
            self.shown.append(
                f"{run.name[:52]:<52} {status.state:<12} {format(params, '8.2f') + 'M':>9} "
                f"{stats['generator_gflops']:8.3g} {flops:11.2e} "
                f"{res.gpus * res.nodes:>4} {hours:8.3g}  {action}"
                + (self._pack_column(run) if self.packs is not None else "")
            )

    def _pack_column(self, run: PlannedRun) -> str:
        pack = self.packs.index.get(run.run_id) if self.packs is not None else None
        return f" (pack {pack})" if pack is not None else ""

    def render(self, merged: int) -> str:
        """The table: header, the lines kept, a count of the rest, totals (`merged` duplicate points)."""
        unit = "GPU" if self.gpus else "CPU"
        header = (f"{'run':<52} {'state':<12} {'params':>9} {'G GFLOPs':>8} {'train FLOPs':>11} {'GPUs':>4} "
                  f"{unit + '-h':>8}  action")
        rule = "-" * len(header)
        more = ([f"... {self.runs - TABLE_ROWS} more runs not shown (--only REGEX lists a subset)"]
                if self.runs > TABLE_ROWS else [])
        totals = (
            f"{self.runs} runs ({merged} duplicate points merged); would submit {self.submit} in "
            f"{len(self.groups)} array job(s); total {self.flops:.2e} training FLOPs, {self.hours:.3g} {unit}-hours "
            f"({self.submit_hours:.3g} to submit) at {self.estimate.device_tflops:g} TFLOP/s "
            f"x {self.estimate.mfu:g} MFU"
        )
        packing = [self.packs.render(unit)] if self.packs is not None else []
        return "\n".join([header, rule, *self.shown, *more, rule, totals, *packing])


def _plan_row(run: PlannedRun, estimate: resources.Estimate, packs: PackPlan | None = None) -> dict[str, Any]:
    """One run of `--dry-run --json`: identity, budget, solved steps, size and cost; in a packed
    grid also `pack`, the index of the job it would be submitted in (None: not submitted)."""
    flops = _estimated_flops(run)
    return {"run_id": run.run_id, "name": run.name, "budget": run.budget, "train_flops": flops,
            "steps": run.flat["train.steps"], "eval_every": run.flat["eval.every"],
            "device_hours": costs.device_hours(flops, estimate),
            **{key: run.flat[key] for key in ("model.width", "model.depth", "model.heads", "model.patch", "seed")},
            **({"pack": packs.index.get(run.run_id)} if packs is not None else {})}


@dataclass
class BudgetCell:
    """One (budget, size) cell of an isoFLOP grid: its first run's solved steps and FLOPs, and its run count."""

    steps: int
    flops: float
    runs: int = 0


@dataclass
class BudgetTable:
    """The isoFLOP part of --dry-run, added up as the runs stream past: per budget its sizes, solved
    steps, achieved FLOPs (and their miss) and estimated time; then the dropped cells with their reasons."""

    estimate: resources.Estimate
    cells: dict[tuple[float, str], BudgetCell] = field(default_factory=dict)  # by (budget, size), first seen first
    runs: int = 0
    hours: float = 0.0

    def add(self, run: PlannedRun) -> None:
        """Count one run in its cell and in the total hours."""
        size = "-".join(f"{k[6]}{run.flat[k]}" for k in ("model.width", "model.depth", "model.heads", "model.patch"))
        flops = _estimated_flops(run)
        cell = self.cells.setdefault((run.budget, size), BudgetCell(run.flat["train.steps"], flops))
        cell.runs += 1
        self.runs += 1
        self.hours += costs.device_hours(flops, self.estimate)

    def render(self, dropped: Dropped) -> str:
        """The cells by budget, most steps first, a total, then each cell the plan dropped."""
        lines = ["", f"{'budget':>9} {'size':<16} {'steps':>8} {'train FLOPs':>11} {'miss':>7} {'hours':>7}  runs"]
        for (budget, size), cell in sorted(self.cells.items(), key=lambda item: (item[0][0], -item[1].steps)):
            hours = costs.device_hours(cell.flops, self.estimate)
            lines.append(f"{budget:9.2e} {size:<16} {cell.steps:>8} {cell.flops:11.3e} "
                         f"{cell.flops / budget - 1:+7.2%} {hours * cell.runs:7.2f}  {cell.runs}")
        lines.append(f"{len(self.cells)} cells, {self.runs} runs, about {self.hours:.2f} device-hours in all "
                     "(runs one at a time)")
        for budget, coords, reason in dropped:
            lines.append(f"dropped: budget {budget:.2e}, {', '.join(f'{k}={v}' for k, v in coords.items())}: {reason}")
        return "\n".join(lines)


def print_json_array(items: Iterable[Any]) -> None:
    """What `print(json.dumps(list(items), indent=1))` prints, written an item at a time so the
    list is never held; "[" is written with the first item, so an error raised before it leaves
    stdout empty."""
    first = True
    for item in items:
        # An item inside the list is indented one step deeper; json.dumps escapes newlines in
        # strings, so every newline in its text starts one of its lines.
        print(("[\n " if first else ",\n ") + json.dumps(item, indent=1).replace("\n", "\n "), end="")
        first = False
    print("[]" if first else "\n]")


def dry_run(spec: GridSpec, sweep_dir: Path, args: argparse.Namespace, defaults: resources.Resources,
            rules: list[tuple[dict[str, Any], dict[str, Any]]], estimate: resources.Estimate) -> int:
    """--dry-run in one walk of the plan that holds no run: each run's JSON object printed as it
    comes (--json), or each row added to the table, whose kept lines and totals print at the end."""
    validate_plan(spec)
    plan = PlanStream(spec, sweep_dir)

    def walk() -> Iterator[Row]:
        return plan_rows(select(plan, args.only), spec, sweep_dir, defaults, rules, args.rerun_failed)

    # A packed grid's packs need every run to submit, sorted: a first walk holds their ids only,
    # so an unpacked grid's dry run stays one walk holding no run.
    packed = defaults.pack > 1 or any(changes.get("pack", 1) > 1 for _, changes in rules)
    packs = PackPlan.of(walk(), estimate) if packed else None
    rows = walk()
    if args.json:
        print_json_array(_plan_row(run, estimate, packs) for run, *_ in rows)
        return 0
    table = DryRunTable(estimate, packs=packs)
    budgets = BudgetTable(estimate) if spec.budgets is not None else None
    for run, status, action, res in rows:
        table.add(run, status, action, res)
        if budgets is not None:
            budgets.add(run)
    print(table.render(plan.merged))
    if budgets is not None:
        print(budgets.render(plan.dropped))
    return 0


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
    if args.dry_run:
        return dry_run(spec, sweep_dir, args, defaults, rules, estimate)
    validate_plan(spec)
    plan = make_plan(spec, sweep_dir)
    chosen = list(select(plan.runs, args.only))
    rows = list(plan_rows(chosen, spec, sweep_dir, defaults, rules, args.rerun_failed))

    kind = executors.resolve_kind(spec.executor.kind)
    if kind == "slurm" and not executors.slurm_available():
        raise GridError("executor slurm: no SLURM controller answers here (`sinfo` failed); "
                        "use --executor local, or launch where the cluster is")
    launch_id = new_launch_id()
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

    submitter = Submitter.start(kind, sweep_dir, spec.executor, job_name=f"gatscale-{spec.name}",
                                launch_id=launch_id, rerun_failed=args.rerun_failed)
    # Longest first: with limited parallelism, a big run started last sets the sweep's end.
    groups = submitter.submit(sorted(to_submit, key=lambda item: -_estimated_flops(item[0])),
                              announce=lambda group: _announce(kind, group))
    if kind == "debug":
        for group in groups:
            for job in group.jobs:
                job.exception()  # runs the job here; failures are in the run folders (and not raised)
    if args.wait or kind == "debug":
        return _watch(plan, chosen, sweep_dir, launch_id, {run.run_id for run, _ in to_submit})
    return 0


def _announce(kind: str, group: SubmittedGroup) -> None:
    """The launcher's line for one submitted resource group."""
    jobs, res = group.jobs, group.resources
    packed = f", {res.pack} runs per job" if res.pack > 1 else ""
    print(f"submitted {len(group.runs)} run(s) as {len(jobs)} {kind} job(s) [{res.gpus} GPU(s), {res.timeout_min} min{packed}]: "
          f"{', '.join(j.job_id for j in jobs[:8])}" + (" ..." if len(jobs) > 8 else ""))


def _estimated_flops(run: PlannedRun) -> float:
    return costs.training_flops(run.flat, costs.model_stats(run.flat))


def _record_plan(plan: Plan, sweep_dir: Path) -> int:
    """Add the plan's runs to the manifest; returns how many recorded runs the plan lacks."""
    commit, _ = rundir.git_state()
    entries = [r.manifest_entry() for r in plan.runs]
    planned = {r.run_id for r in plan.runs}

    def change(data: dict[str, Any]) -> None:
        data.setdefault("created", rundir.utc_now())
        data.update(grid_file=_grid_file(plan.spec.path),
                    grid=plan.spec.text, git_commit=commit, updated=rundir.utc_now())
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
