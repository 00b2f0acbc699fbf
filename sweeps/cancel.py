"""`python -m sweeps.cancel SWEEP_DIR [--only REGEX]`: stop exactly the runs named, on any executor.

Each chosen run gets a cancel request (`runs/<name>/.sweep/cancel.json`). The job holding the
run stops its trainer within a couple of seconds and moves on to its next run; a job that has
not reached it yet skips it. A job whose runs are all chosen is also cancelled outright (a
queued SLURM job then never starts). A stopped run keeps `running` in its status.json with no
lease, which reads as `interrupted`; the next launch clears the request and resumes it from its
checkpoint.
"""
from __future__ import annotations

import sys
from pathlib import Path

from contract import cli, rundir
from sweeps import executors, manifest
from sweeps import lease as leases
from sweeps.spec import GridError, only_filter


def cancel_sweep(sweep_dir: Path, only: str | None = None) -> tuple[list[str], list[str]]:
    """Cancel the runs matching `only` (all when None); returns (run names, job ids stopped
    outright). No run matching is an error."""
    data = manifest.read(sweep_dir)
    if data is None:
        raise GridError(f"{sweep_dir}: not a sweep folder (no {manifest.MANIFEST})")
    wanted = only_filter(only)
    runs = data.get("runs", [])
    chosen = [r for r in runs if wanted(r["name"], r["run_id"])]
    if not chosen:
        raise GridError(f"--only {only!r} matches none of the {len(runs)} runs in {sweep_dir}")
    for run in chosen:
        run_dir = manifest.run_dir(sweep_dir, run)
        if run_dir is None:
            cli.say(f"warning: {Path(sweep_dir) / manifest.MANIFEST}: run {run['run_id']} has dir "
                    f"{run.get('dir')!r}, outside the sweep's runs/ folder: skipped", file=sys.stderr)
            continue
        rundir.request_cancel(run_dir)
    chosen_ids = {r["run_id"] for r in chosen}
    by_kind: dict[str, list[str]] = {}
    for job in data.get("jobs", []):
        if not set(job["run_ids"]) <= chosen_ids:  # a job also holding other runs keeps running them
            continue
        # a local job id is a pid: signal it only while it is still the process the launch started
        if job.get("executor") == "local" and (
                job.get("process_start") is None or leases.process_start(job["job_id"]) != job["process_start"]):
            continue
        by_kind.setdefault(job.get("executor", "slurm"), []).append(job["job_id"])
    stopped = []
    for kind, ids in by_kind.items():
        stopped += executors.cancel(kind, ids)
    return [r["name"] for r in chosen], stopped


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = cli.Parser("sweeps.cancel", __doc__)
    p.add_argument("sweep_dir", type=Path, help="the sweep folder (what sweeps.launch wrote)")
    p.add_argument("--only", metavar="REGEX", help="only runs whose name or id matches (default: every run)")
    args = p.parse_args(argv)

    def body() -> int:
        names, stopped = cancel_sweep(args.sweep_dir, args.only)
        cli.say(f"cancel requested for {len(names)} run(s); {len(stopped)} job(s) holding only those runs stopped"
                + (f": {', '.join(stopped)}" if stopped else ""))
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
