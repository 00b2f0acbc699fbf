"""`python -m sweeps.status SWEEP_DIR|GRID.yaml`: where every run of a sweep stands.

Run folders are read first (status.json, the lease, the sweep's events, the last stats line), so
this works with no scheduler at all. When SLURM answers, squeue marks runs whose job is still
queued, and sacct (when accounting is on) names how a vanished job ended (TIMEOUT, CANCELLED...).

    python -m sweeps.status results/scaling_grid
    python -m sweeps.status scaling_grid.yaml --only w64
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from contract import cli, rundir
from sweeps import executors, manifest
from sweeps.plan import run_status
from sweeps.spec import ExecutorSpec, GridError, default_sweep_dir, load_grid, only_filter

_DEFAULT_STALE_S = ExecutorSpec().lease_stale_s


@dataclass
class RunRow:
    """One line of the status table."""

    run_id: str
    name: str
    dir: str
    state: str
    step: int | None
    metric: str
    attempts: int
    job: str
    reason: str
    checkpoint_step: int | None = None  # the last durable step (a resume starts there)


def last_progress(run_dir: Path) -> tuple[int | None, str]:
    """(newest logged step, newest eval metric "fd_fmnist=35.1" or else newest loss_g) from
    stats.jsonl; status.json only records the step at start and end of an attempt."""
    step: int | None = None
    fallback = ""
    for record in reversed(rundir.read_stats_tail(run_dir)):
        if step is None and isinstance(record.get("step"), int):
            step = record["step"]
        if record.get("metrics"):
            return step, ", ".join(f"{k}={v:.4g}" for k, v in record["metrics"].items() if isinstance(v, (int, float)))
        if not fallback and isinstance(record.get("loss_g"), (int, float)):
            fallback = f"loss_g={record['loss_g']:.4g}"
    return step, fallback


_TQDM = re.compile(r"^(?P<what>.*?):\s*\d+%\|.*?\|\s*(?P<count>\d+/\d+)")


def activity(run_dir: Path, step: int | None) -> str:
    """What a running run is doing now: `step s/S` once it trains, else the newest line of its
    trainer log (one-off data encoding as `encoding ... x/N`, or waiting for another job's)."""
    if step is not None:
        total = planned_steps(run_dir)
        return f"step {step}" if total is None else f"step {step}/{total}"
    try:
        with open(run_dir / rundir.SWEEP_SUBDIR / rundir.TRAINER_LOG, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 4096))
            tail = handle.read().decode(errors="replace")
    except OSError:
        return "starting"
    fragments = [f.strip() for f in re.split(r"[\r\n]", tail) if f.strip()]
    if not fragments:
        return "starting"
    match = _TQDM.match(fragments[-1])  # a progress bar: keep its label and count
    return f"{match['what']} {match['count']}" if match else fragments[-1][:60]


def planned_steps(run_dir: Path) -> int | None:
    """``train.steps`` of a run's config.yaml (None before the run wrote it)."""
    try:
        return int(yaml.safe_load((run_dir / rundir.CONFIG).read_text())["train"]["steps"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """Final scheduler states from sacct (empty when accounting is off or sacct is missing)."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(sorted(set(job_ids)))],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if out.returncode != 0:
        return {}
    return dict(line.split("|", 1) for line in out.stdout.splitlines() if "|" in line)


def collect(sweep_dir: Path, *, only: str | None = None, stale_s: float = _DEFAULT_STALE_S,
            enrich: bool = True) -> list[RunRow]:
    """The rows of a sweep, from its manifest and run folders (plus scheduler enrichment)."""
    data = manifest.read(sweep_dir)
    if data is None:
        raise GridError(f"{sweep_dir} has no {manifest.MANIFEST} (launch the grid first)")
    wanted = only_filter(only)
    runs = [r for r in data.get("runs", []) if wanted(r["name"], r["run_id"])]
    job_of: dict[str, tuple[str, str]] = {}
    for job in data.get("jobs", []):
        for rid in job["run_ids"]:
            job_of[rid] = (job["job_id"], job.get("executor", "slurm"))
    live: dict[str, str] = {}
    ended: dict[str, str] = {}
    if enrich:
        slurm_ids = [j for j, kind in set(job_of.values()) if kind == "slurm"]
        if slurm_ids and executors.slurm_available():
            live = executors.slurm_states(slurm_ids)
            ended = sacct_states([j for j in slurm_ids if j not in live])
        local_ids = [j for j, kind in set(job_of.values()) if kind == "local"]
        live.update({j: "RUNNING" for j in executors.active_jobs("local", local_ids)})
    rows = []
    now = time.time()
    for entry in runs:
        run_dir = Path(sweep_dir) / entry["dir"]
        status = run_status(run_dir, stale_s, now)
        events = rundir.read_events(run_dir)
        job_id, _ = job_of.get(entry["run_id"], ("", ""))
        state, reason = status.state, status.reason or ""
        if state in ("pending", "interrupted") and job_id in live:
            state = "queued" if live[job_id] == "PENDING" or state == "pending" else state
        elif state == "interrupted" and job_id in ended:
            reason = reason or f"job {job_id} ended {ended[job_id]}"
        # The job that last trained the run, not one that merely found it done and skipped it.
        last_job = next((e.get("job_id") for e in reversed(events) if e.get("event") == "start" and e.get("job_id")), None)
        logged_step, metric = last_progress(run_dir)
        step = max((s for s in (status.step, logged_step) if s is not None), default=None)
        rows.append(RunRow(
            run_id=entry["run_id"], name=entry["name"], dir=entry["dir"], state=state, step=step,
            metric=metric, attempts=sum(1 for e in events if e.get("event") == "start"),
            job=str(last_job or job_id), reason=reason, checkpoint_step=status.checkpoint_step,
        ))
    return rows


def render(rows: list[RunRow]) -> str:
    """Counts by state, then one line per run."""
    counts = {s: sum(1 for r in rows if r.state == s) for s in (*rundir.SWEEP_STATES, "queued")}
    head = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no runs"
    lines = [f"{len(rows)} runs: {head}", "",
             f"{'run':<52} {'state':<11} {'step':>7} {'ckpt':>7} {'attempts':>8} {'job':<12} {'last metric':<22} reason"]
    for r in rows:
        reason = r.reason.replace("\n", " ")[:80]
        durable = "" if r.checkpoint_step is None else r.checkpoint_step
        lines.append(f"{r.name[:52]:<52} {r.state:<11} {'' if r.step is None else r.step:>7} {durable:>7} "
                     f"{r.attempts:>8} {r.job[:12]:<12} {r.metric[:22]:<22} {reason}")
    return "\n".join(lines)


def work_done(sweep_dir: Path, rows: list[RunRow], settled: set[str],
              planned: Mapping[str, int] | None = None) -> float:
    """How much of the watched work is done: with `planned` (run id -> planned steps), steps:
    each settled run's planned steps plus the steps each running one has trained; without it,
    runs: the settled ones plus each running one's fraction of its steps. Runs finish in bursts
    and differ in length, so an ETA from finished runs misleads; one from steps does not."""
    done = 0.0
    for row in rows:
        weight = planned.get(row.run_id, 0) if planned is not None else 1
        if row.run_id in settled:
            done += weight
        elif row.state == "running" and row.step:
            total = planned.get(row.run_id) if planned is not None else planned_steps(Path(sweep_dir) / row.dir)
            if total:
                done += weight * min(row.step / total, 1.0)
    return done


def watch(sweep_dir: Path, run_ids: list[str], stale_s: float, *, launch_id: str | None = None,
          submitted: set[str] | None = None, poll_s: float = 1.0,
          planned: Mapping[str, int] | None = None) -> dict[str, str]:
    """Show a tqdm bar until every run in `run_ids` is final or failed, or no job is left that
    could move it; returns the final state of each run. A run in `submitted` only counts once a
    job of `launch_id` has dealt with it (a rerun of a failed run starts out `failed`). With
    `planned` (run id -> planned steps) the bar and its ETA count steps, else runs."""
    from tqdm import tqdm

    wanted = set(run_ids)
    submitted = submitted or set()
    touched: set[str] = set()
    total = sum(planned.get(rid, 0) for rid in wanted) if planned is not None else len(wanted)
    unit, shown = ("step", "{n:.0f}") if planned is not None else ("run", "{n:.1f}")
    # a log file (nohup, a batch job, CI) gets a line every few seconds, not one per poll
    bar = tqdm(total=total, unit=unit, desc=f"{unit}s trained" if planned is not None else "runs final", leave=True,
               mininterval=0.1 if sys.stderr.isatty() else 5.0, miniters=0,
               bar_format="{l_bar}{bar}| " + shown + "/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]")
    first = True
    idle_polls = 0
    try:
        while True:
            rows = [r for r in collect(sweep_dir, stale_s=stale_s) if r.run_id in wanted]
            states = {r.run_id: r.state for r in rows}
            for row in rows:
                if row.run_id in submitted and row.run_id not in touched and any(
                        e.get("launch") == launch_id for e in rundir.read_events(Path(sweep_dir) / row.dir)):
                    touched.add(row.run_id)
            settled = {rid for rid, s in states.items() if s in rundir.SETTLED_STATES
                       and (rid not in submitted or rid in touched)}
            done = len(settled)
            counts = {s: list(states.values()).count(s) for s in set(states.values())}
            doing = [f"{r.name}: {activity(Path(sweep_dir) / r.dir, r.step)}" for r in rows if r.state == "running"]
            bar.set_postfix_str(", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                                + (f" | {'; '.join(doing)}" if doing else ""), refresh=False)
            done_now = work_done(sweep_dir, rows, settled, planned)
            if first:  # work done before this watch began is not part of its rate (nor its ETA)
                bar.initial = bar.n = done_now
                bar.refresh()
                first = False
            bar.update(done_now - bar.n)  # redraws at most every mininterval
            if done == len(wanted):
                break
            # nothing running or queued for the rest: stop after a short grace (jobs just
            # submitted may not show in squeue yet)
            moving = any(s in ("running", "queued") for s in states.values()) or bool(
                executors.active_jobs("local", _local_jobs(sweep_dir, launch_id)))
            idle_polls = 0 if moving else idle_polls + 1
            if idle_polls * poll_s >= 30:
                break
            time.sleep(poll_s)
    finally:
        bar.close()
    print(render(rows))
    return states


def _local_jobs(sweep_dir: Path, launch_id: str | None) -> list[str]:
    """Local job ids of one launch (a live worker may not have claimed its runs yet)."""
    data = manifest.read(sweep_dir) or {}
    return [j["job_id"] for j in data.get("jobs", [])
            if j.get("launch") == launch_id and j.get("executor") == "local"]


def main(argv: list[str] | None = None) -> int:
    """CLI: print the status table (or JSON with --json)."""
    p = cli.Parser("sweeps.status", __doc__)
    p.add_argument("target", help="sweep folder, or a grid YAML (then its default folder, studies/<grid name>/)")
    p.add_argument("--only", metavar="REGEX", help="only runs whose name or id matches")
    p.add_argument("--json", action="store_true", help="print rows as JSON lines")
    args = p.parse_args(argv)

    def body() -> int:
        sweep_dir, stale_s = resolve_target(args.target)
        rows = collect(sweep_dir, only=args.only, stale_s=stale_s)
        if args.only and not rows:
            raise GridError(f"--only {args.only!r} matches no run in {sweep_dir}")
        text = "\n".join(json.dumps(vars(row)) for row in rows) if args.json else render(rows)
        try:
            print(text, flush=True)
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

    return cli.run(body)


def resolve_target(target: str) -> tuple[Path, float]:
    """A sweep folder and its lease staleness from a folder or grid argument."""
    path = Path(target)
    if path.is_dir():
        return path, _stale_from_manifest(path)
    if path.suffix not in (".yaml", ".yml"):
        raise GridError(f"{target}: no such sweep folder (give a sweep folder, or the grid YAML it was launched from)")
    spec = load_grid(target)
    sweep_dir = default_sweep_dir(spec.name)
    if not sweep_dir.is_dir():
        raise GridError(f"{sweep_dir}: no sweep folder for {target} here (launched with --out? give that folder)")
    return sweep_dir, spec.executor.lease_stale_s


def _stale_from_manifest(sweep_dir: Path) -> float:
    data: dict[str, Any] = manifest.read(sweep_dir) or {}
    try:
        grid = yaml.safe_load(data.get("grid") or "") or {}
        return float((grid.get("executor") or {}).get("lease_stale_s", _DEFAULT_STALE_S))
    except (yaml.YAMLError, ValueError, AttributeError):
        return _DEFAULT_STALE_S


if __name__ == "__main__":
    sys.exit(main())
