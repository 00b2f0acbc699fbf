"""`python -m sweeps.tune lr_search.yaml`: Optuna search of the best base LR per grid point.

A search file is a grid file (`sweeps.spec`: base, set, axes/zip, resources, executor) plus a
`search:` section (`SearchSpec`). Every grid point (typically one per width) gets its own
Optuna study: TPE proposes `train.base_lr` on a log scale, and each trial is one ordinary run
folder under STUDY_DIR/runs/, named and hashed by the sweep's `sweeps.plan.RunNamer` (two LRs whose
short ids collide get two folders) and submitted through the sweep's `sweeps.submit.Submitter`. While a
trial trains, this driver reads the eval metric from its stats.jsonl, reports it to the study
and stops the job when the median pruner says so. A diverged run scores +inf (too high an LR
is an answer, not an error).

    python -m sweeps.tune lr_search.yaml                    # studies/lr_search/
    python -m sweeps.tune lr_search.yaml --n-trials 16      # continue the same studies to 16
    python -m sweeps.tune lr_search.yaml --executor debug --set train.steps=50

STUDY_DIR holds `optuna.journal` (JournalStorage: safe on NFS and with several processes;
`search.storage: sqlite` gives `optuna.db`, for single-process use only), `manifest.json`
(so `analysis.load` reads the trials like a sweep), `best_lr.csv` / `best_lr.json` (one row per
study: best base LR, the LR it means for the hidden matrices, its metric) and `driver.lease`.

Resuming: rerunning the command continues each study up to `n_trials` finished (complete or
pruned) trials. One driver runs per study folder (the lease). On start, trials a dead driver
left RUNNING are settled: a run that finished meanwhile is scored from its folder; any other
is marked FAIL and re-enqueued with the same LR (Optuna's RetryHeartbeatStaleTrialCallback),
which maps onto the same run folder, so the retry resumes from its checkpoint.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from contract import cli


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = cli.Parser("sweeps.tune", __doc__)
    p.add_argument("search", help="search YAML: a path, or a bundled search's name (lr_search.yaml)")
    p.add_argument("--out", help="study folder to write (default studies/<search name>/)")
    p.add_argument("--n-trials", type=int, help="finished trials per study to reach (overrides search.n_trials)")
    p.add_argument("--parallelism", type=int, help="trials in flight at once (overrides search.parallel)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="trainer override for every trial (repeatable)")
    p.add_argument("--executor", choices=("auto", "slurm", "local", "debug"), help="override executor.kind")
    return p


if __name__ == "__main__":  # --help, --version and usage errors answer before optuna loads (seconds)
    parser().parse_args()


import optuna  # noqa: E402
from optuna.storages import RetryHeartbeatStaleTrialCallback  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from contract.errors import UserError  # noqa: E402
from contract import config as gat_config  # noqa: E402
from contract import rundir  # noqa: E402
from contract.lr_rules import learning_rate  # noqa: E402
from sweeps import costs, executors, manifest, resources  # noqa: E402
from sweeps import lease as leases  # noqa: E402
from sweeps.optuna_private import trial_handle  # noqa: E402
from sweeps.plan import PlannedRun, RunNamer, effective_flat, run_status  # noqa: E402
from sweeps.spec import (GridError, GridSpec, Point, default_sweep_dir, expand, parse_grid, read_grid_file,  # noqa: E402
                         validate_points)
from sweeps.submit import Submitter, new_launch_id  # noqa: E402

PARAM = "train.base_lr"
JOURNAL, SQLITE, DRIVER_LEASE = "optuna.journal", "optuna.db", "driver.lease"
BEST_CSV, BEST_JSON = "best_lr.csv", "best_lr.json"
STORAGES = ("journal", "sqlite")


@dataclass
class SearchSpec:
    """The `search:` section. `n_trials`: finished (complete or pruned) trials per study;
    `parallel`: trials in flight at once over all studies; `max_failures`: failed trials per
    study in one invocation before that study stops; `max_retries`: re-enqueues of one trial
    left RUNNING by a dead driver."""

    low: float = 1e-5
    high: float = 1e-2
    n_trials: int = 8
    parallel: int = 2
    metric: str = "fd_fmnist"
    direction: str = "minimize"
    seed: int = 0
    n_startup_trials: int = 4
    prune: bool = True
    pruner_startup_trials: int = 3
    pruner_warmup_steps: int = 0
    storage: str = "journal"
    poll_s: float = 5.0
    max_failures: int = 3
    max_retries: int = 3


@dataclass
class InFlight:
    """A trial whose run is training: the study, the trial, its job and its run folder."""

    study: optuna.Study
    trial: optuna.Trial
    job: Any
    run_dir: Path
    reported: set[int]


def parse_search(data: Any) -> SearchSpec:
    """Check a `search:` mapping; unknown keys and bad values name the key."""
    data = data or {}
    if not isinstance(data, dict):
        raise GridError(f"search: expected a mapping, got {data!r}")
    allowed = {f.name for f in fields(SearchSpec)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise GridError(f"search: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    spec = SearchSpec(**data)
    if not 0 < spec.low < spec.high:
        raise GridError(f"search: need 0 < low < high, got low={spec.low}, high={spec.high}")
    if spec.direction not in ("minimize", "maximize"):
        raise GridError(f"search.direction={spec.direction!r} is not minimize or maximize")
    if spec.storage not in STORAGES:
        raise GridError(f"search.storage={spec.storage!r} is not one of: {', '.join(STORAGES)}")
    if spec.n_trials < 1 or spec.parallel < 1:
        raise GridError("search.n_trials and search.parallel must be >= 1")
    return spec


def load_search(source: str | Path, overrides: dict[str, Any] | None = None) -> tuple[GridSpec, SearchSpec]:
    """Read a search file: the grid part through `sweeps.spec`, the `search:` part here."""
    path, text, data = read_grid_file(source)
    if not isinstance(data, dict):
        raise GridError(f"{path}: a search file must be a mapping of sections")
    search = parse_search(data.pop("search", None))
    grid = parse_grid(data, path=path, text=text, overrides=overrides)
    if PARAM in grid.axes or PARAM in grid.fixed:
        raise GridError(f"{PARAM} is what the search chooses; remove it from axes/zip/set")
    return grid, search


def study_name(grid: GridSpec, point: Point) -> str:
    """`<grid name>[model.width=64,model.heads=2]`: stable across relaunches of one file."""
    return f"{grid.name}[{','.join(f'{k}={v}' for k, v in point.coords.items())}]"


def open_storage(study_dir: Path, kind: str) -> optuna.storages.BaseStorage | str:
    """The journal file (default; Optuna's choice for NFS) or an SQLite URL."""
    if kind == "sqlite":
        return f"sqlite:///{(study_dir / SQLITE).resolve()}"
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(study_dir / JOURNAL)))


def eval_metrics(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    """(step, value) of `metric` at every eval tick written so far."""
    values = []
    for record in rundir.read_stats(run_dir):
        value = (record.get("metrics") or {}).get(metric)
        if isinstance(value, (int, float)):
            values.append((int(record["step"]), float(value)))
    return values


class Tuner:
    """One driver over all studies of a search file (see the module docstring)."""

    def __init__(self, grid: GridSpec, search: SearchSpec, study_dir: Path, kind: str) -> None:
        self.grid, self.search, self.study_dir, self.kind = grid, search, study_dir, kind
        self.points = expand(grid)
        validate_points(grid, self.points)
        study_dir.mkdir(parents=True, exist_ok=True)
        self.defaults, self.rules, _ = resources.parse(grid.resources)
        self.storage = open_storage(study_dir, search.storage)
        # The namer knows the runs the manifest records (earlier drivers' trials): a new LR whose short
        # id collides with one of them gets its own folder, as a plan's second colliding point does.
        self.namer = RunNamer(grid, study_dir, [*grid.axes, PARAM])
        self.submitter = Submitter.start(kind, study_dir, grid.executor, job_name=f"gatscale-tune-{grid.name}",
                                         launch_id=new_launch_id("tune-"), rerun_failed=True)
        self.studies = [self._study(point, index) for index, point in enumerate(self.points)]
        self.failures = {study.study_name: 0 for study in self.studies}
        self.in_flight: list[InFlight] = []

    def _study(self, point: Point, index: int) -> optuna.Study:
        name = study_name(self.grid, point)
        s = self.search
        # Seed with the trial count: a resumed study must not replay its first proposals.
        existing = {summary.study_name: summary.n_trials for summary in optuna.get_all_study_summaries(self.storage)}
        sampler = optuna.samplers.TPESampler(seed=s.seed + 1000 * index + existing.get(name, 0),
                                             n_startup_trials=s.n_startup_trials, constant_liar=True)
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup_trials, n_warmup_steps=s.pruner_warmup_steps)
                  if s.prune else optuna.pruners.NopPruner())
        study = optuna.create_study(storage=self.storage, study_name=name, direction=s.direction,
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
        study.set_user_attr("point", point.coords)
        return study

    # ---- one trial ------------------------------------------------------------------------

    def _point(self, study: optuna.Study) -> Point:
        return self.points[self.studies.index(study)]

    def run_for(self, point: Point, lr: float) -> PlannedRun:
        """The run of (point, LR), named as a sweep names its runs (`RunNamer`); one LR asked again
        (a re-enqueued trial) is the same run, so its retry resumes from its checkpoint."""
        run, _ = self.namer.place(Point({**point.coords, PARAM: lr}, {**point.overrides, PARAM: lr}))
        return run

    def start_trial(self, study: optuna.Study) -> None:
        """Ask for an LR (a re-enqueued one first), record its run, submit its job."""
        trial = study.ask()
        lr = trial.suggest_float(PARAM, self.search.low, self.search.high, log=True)
        run = self.run_for(self._point(study), lr)
        run_dir = run.dir.resolve()
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("run_name", run.name)
        res = resources.resolve(run.flat, self.defaults, self.rules, stats=lambda: costs.model_stats(run.flat))
        manifest.update(self.study_dir, lambda data: manifest.merge_runs(data, [run.manifest_entry()]))
        [group] = self.submitter.submit([(run, res)], record={"study": study.study_name, "trial": trial.number})
        [job] = group.jobs
        trial.set_user_attr("job_id", job.job_id)
        print(f"{study.study_name}: trial {trial.number} lr={lr:.3g} -> {run.name} (job {job.job_id})", flush=True)
        if self.kind == "debug":
            job.exception()  # the debug executor runs the job here, now; its outcome is in the run folder
        self.in_flight.append(InFlight(study, trial, job, run_dir, set()))

    def score(self, run_dir: Path, state: str) -> float | None:
        """A finished run's objective: its last eval value; +inf (or -inf) when it diverged."""
        if state == "diverged":
            return math.inf if self.search.direction == "minimize" else -math.inf
        values = eval_metrics(run_dir, self.search.metric)
        return values[-1][1] if values else None

    def _tell(self, study: optuna.Study, trial: optuna.Trial, run_dir: Path, state: str, reason: str | None = None) -> str:
        """Finish a trial from its run's state (`completed`, `diverged` or `failed` with the
        reason); returns the outcome as text."""
        value = self.score(run_dir, state) if state in rundir.FINAL_STATES else None
        if value is None:
            reason = reason or (f"no {self.search.metric!r} in stats.jsonl" if state in rundir.FINAL_STATES else "run failed")
            trial.set_user_attr("fail_reason", reason)
            study.tell(trial, state=TrialState.FAIL)
            self.failures[study.study_name] += 1
            return f"failed ({reason})"
        trial.set_user_attr("run_state", state)
        study.tell(trial, value)
        return f"{state}, {self.search.metric}={value:.4g}"

    def progress(self, study: optuna.Study) -> str:
        """`<study> [finished/target]`, the prefix of each trial's line: the driver's progress."""
        finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        return f"{study.study_name} [{finished}/{self.search.n_trials}]"

    def poll(self, flight: InFlight) -> bool:
        """Report new eval values, prune or finish; True when the trial is over."""
        for step, value in eval_metrics(flight.run_dir, self.search.metric):
            if step not in flight.reported:
                flight.trial.report(value, step)
                flight.reported.add(step)
        status = run_status(flight.run_dir, self.grid.executor.lease_stale_s)
        number = flight.trial.number
        if status.state in rundir.SETTLED_STATES:
            outcome = self._tell(flight.study, flight.trial, flight.run_dir, status.state, status.reason)
            print(f"{self.progress(flight.study)}: trial {number} {outcome}", flush=True)
            return True
        if flight.reported and flight.trial.should_prune():
            executors.cancel(self.kind, [flight.job.job_id])
            flight.study.tell(flight.trial, state=TrialState.PRUNED)
            print(f"{self.progress(flight.study)}: trial {number} pruned at step {max(flight.reported)}", flush=True)
            return True
        # A job that ended while nobody trains the run (stopped, lease lost, requeues used up).
        if flight.job.done() and status.state != "running":
            reason = f"job {flight.job.job_id} ended with the run {status.state}"
            outcome = self._tell(flight.study, flight.trial, flight.run_dir, "failed", reason)
            print(f"{self.progress(flight.study)}: trial {number} {outcome}", flush=True)
            return True
        return False

    # ---- the driver -----------------------------------------------------------------------

    def settle_stale(self) -> None:
        """Trials a dead driver left RUNNING: score finished runs, fail and re-enqueue the rest."""
        with warnings.catch_warnings():  # experimental since Optuna 2.8, and the tool for this job
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = RetryHeartbeatStaleTrialCallback(max_retry=self.search.max_retries)
        for study in self.studies:
            for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                trial = trial_handle(study, frozen)  # finishes a trial another process created
                run_dir = Path(frozen.user_attrs.get("run_dir", self.study_dir / "runs" / "?"))
                state = run_status(run_dir, self.grid.executor.lease_stale_s).state
                if state in rundir.FINAL_STATES:
                    outcome = self._tell(study, trial, run_dir, state)
                    print(f"{study.study_name}: stale trial {frozen.number} recovered: {outcome}", flush=True)
                    continue
                trial.set_user_attr("fail_reason", "its driver stopped while it ran")
                study.tell(trial, state=TrialState.FAIL)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    retry(study, study.trials[frozen.number])
                print(f"{study.study_name}: stale trial {frozen.number} marked FAIL and re-enqueued", flush=True)

    def finished(self, study: optuna.Study) -> int:
        """Trials that count toward `n_trials`: complete or pruned."""
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def wants_more(self, study: optuna.Study) -> bool:
        busy = sum(1 for f in self.in_flight if f.study is study)
        return (self.finished(study) + busy < self.search.n_trials
                and self.failures[study.study_name] < self.search.max_failures)

    def run(self) -> bool:
        """Drive every study to `n_trials`; True when all got there."""
        self.settle_stale()
        while True:
            while len(self.in_flight) < self.search.parallel:
                candidates = [s for s in self.studies if self.wants_more(s)]
                if not candidates:
                    break
                self.start_trial(min(candidates, key=self.finished))
            if not self.in_flight:
                break
            self.in_flight = [flight for flight in self.in_flight if not self.poll(flight)]
            if self.in_flight and self.kind != "debug":
                time.sleep(self.search.poll_s)
        return all(self.finished(s) >= self.search.n_trials for s in self.studies)

    def best(self) -> list[dict[str, Any]]:
        """One row per study: the best base LR, the hidden-matrix LR it means under the run's
        rule, and the counts of trials by state."""
        rows = []
        for study, point in zip(self.studies, self.points):
            flat = effective_flat(self.grid, point)
            trials = study.get_trials(deepcopy=False)
            counts = {state: sum(1 for t in trials if t.state == state)
                      for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
            scored = [t for t in trials if t.state == TrialState.COMPLETE and math.isfinite(t.value)]
            best = (min if self.search.direction == "minimize" else max)(scored, key=lambda t: t.value) if scored else None
            lr = best.params[PARAM] if best else None
            rule, width, base_width = flat["train.lr_rule"], flat["model.width"], flat["train.base_width"]
            rows.append({
                "study": study.study_name, **point.coords, "model.width": width, "train.lr_rule": rule,
                "train.base_width": base_width, "best_lr": lr,
                "effective_lr": learning_rate(rule, width, lr, base_width) if best else None,
                "metric": self.search.metric, "best_value": best.value if best else None,
                "best_run": best.user_attrs.get("run_name") if best else None,
                "n_complete": counts[TrialState.COMPLETE], "n_pruned": counts[TrialState.PRUNED],
                "n_failed": counts[TrialState.FAIL],
            })
        return rows


def write_best(rows: list[dict[str, Any]], study_dir: Path) -> None:
    """best_lr.csv (for analysis.instability.rule_predictions) and best_lr.json."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    tmp = study_dir / (BEST_CSV + ".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, study_dir / BEST_CSV)
    rundir.write_json_atomic(study_dir / BEST_JSON, rows)


def render(rows: list[dict[str, Any]]) -> str:
    """The printed summary: one line per study."""
    lines = [f"{'study':<48} {'best base LR':>12} {'hidden LR':>10} {'value':>10}  complete/pruned/failed"]
    for row in rows:
        fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
        lines.append(f"{row['study'][:48]:<48} {fmt(row['best_lr']):>12} {fmt(row['effective_lr']):>10} "
                     f"{fmt(row['best_value']):>10}  {row['n_complete']}/{row['n_pruned']}/{row['n_failed']}")
    return "\n".join(lines)


def tune(args: argparse.Namespace) -> int:
    """The CLI's work; returns the exit status."""
    grid, search = load_search(args.search, gat_config.parse_set(args.set) if args.set else None)
    changes = {"n_trials": args.n_trials, "parallel": args.parallelism}
    search = parse_search({**asdict(search), **{k: v for k, v in changes.items() if v is not None}})
    if args.executor:
        grid.executor.kind = args.executor
    study_dir = Path(args.out) if args.out else default_sweep_dir(grid.name)
    driver = leases.acquire(study_dir / DRIVER_LEASE, None, stale_s=grid.executor.lease_stale_s,
                            heartbeat_s=grid.executor.lease_heartbeat_s)
    if driver is None:
        holder = leases.holder(study_dir / DRIVER_LEASE, grid.executor.lease_stale_s) or {}
        raise UserError(f"another sweeps.tune driver ({holder.get('host')}, pid {holder.get('pid')}) is running "
                        f"{study_dir}; it frees the folder when it stops (or {grid.executor.lease_stale_s:g} s after it died)")
    driver.start_heartbeat()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the driver prints its own one-line events
    try:
        tuner = Tuner(grid, search, study_dir, executors.resolve_kind(grid.executor.kind))
        reached = tuner.run()
        rows = tuner.best()
    finally:
        driver.release()
    write_best(rows, study_dir)
    print(render(rows))
    print(f"wrote {study_dir / BEST_CSV}")
    if not reached:
        print(f"warning: some studies stopped short of {search.n_trials} trials after "
              f"{search.max_failures} failures; see the failed runs' status.json", file=sys.stderr)
    return 0 if reached else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point; search-file and config errors print one line and return 2."""
    args = parser().parse_args(argv)
    return cli.run(lambda: tune(args))


if __name__ == "__main__":
    sys.exit(main())
