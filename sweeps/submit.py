"""One path from planned runs to submitted jobs: `sweeps.launch` (a grid, launched or relaunched)
and `sweeps.tune` (a search's trials, retries included) both submit through a `Submitter`.

The jobs of one launch share its launch id, the code they import (the checkout, or a snapshot of
it taken once per launch under `code/<launch id>/` when `executor.snapshot_code`), the executor
settings and the trainer module. `Submitter.submit` takes runs with their resources and, per
resource group: withdraws earlier `sweeps.cancel` requests, builds the jobs (one per pack of runs on SLURM,
`array_parallelism` workers sharing the list locally, one in-process job for debug), submits them
through `sweeps.executors`, and records each job in the manifest, which `sweeps.status`,
`sweeps.cancel` and the next launch read.
"""
from __future__ import annotations

import math
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from contract import rundir
from sweeps import executors, manifest, resources
from sweeps import lease as leases
from sweeps.job import RunJob, RunTask
from sweeps.plan import PlannedRun
from sweeps.resources import Resources
from sweeps.spec import ExecutorSpec, GridError


def new_launch_id(prefix: str = "") -> str:
    """`<prefix>20250101-120000-1a2b3c`: sorts by time, unique across concurrent launches."""
    return prefix + time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


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


@dataclass
class SubmittedGroup:
    """The jobs of one resource group, in the order of `runs` (SLURM: one job per pack of
    `resources.pack` runs)."""

    resources: Resources
    runs: list[PlannedRun]
    jobs: list[submitit.Job]


@dataclass
class Submitter:
    """What every job of one launch shares; `start` makes one, `submit` sends runs."""

    kind: str  # slurm | local | debug (resolved, never auto)
    sweep_dir: Path
    executor: ExecutorSpec
    job_name: str
    launch_id: str
    code_root: str
    rerun_failed: bool
    trainer: str

    @classmethod
    def start(cls, kind: str, sweep_dir: Path, executor: ExecutorSpec, *, job_name: str, launch_id: str,
              rerun_failed: bool) -> Submitter:
        """A launch's submitter: snapshots the code now when `executor.snapshot_code`, and reads the
        trainer module from `GATSCALE_TRAINER` (default `gat.train`; tests name a stub)."""
        code_root = str(rundir.SOURCE_ROOT)
        if executor.snapshot_code:
            code_root = str(snapshot_code(Path(sweep_dir).resolve() / "code" / launch_id))
        return cls(kind, Path(sweep_dir), executor, job_name, launch_id, code_root, rerun_failed,
                   os.environ.get("GATSCALE_TRAINER", "gat.train"))

    def submit(self, runs: Sequence[tuple[PlannedRun, Resources]], record: dict[str, Any] | None = None,
               announce: Callable[[SubmittedGroup], None] | None = None) -> list[SubmittedGroup]:
        """Submit `runs` as one array job (or set of workers) per distinct resources, in the order
        given within each group; `record` adds fields to each job's manifest entry, `announce` is
        told of each group as soon as it is submitted and recorded (so a later group's failure
        leaves the earlier ones reported). The debug executor's jobs run when their result is asked
        for (`job.exception()`)."""
        for run, _ in runs:  # submitting a run again withdraws an earlier sweeps.cancel
            rundir.clear_cancel(run.dir)
        submitted = []
        for res, packs in resources.packs(runs):
            fns = self.build_jobs(packs, res)
            # a local worker drains its share of the packs one after another
            timeout = res.timeout_min * math.ceil(len(packs) / len(fns))
            ex = executors.make_executor(self.kind, self.sweep_dir.resolve() / ".submitit", self.executor, res,
                                         name=self.job_name, code_root=self.code_root, timeout_min=timeout)
            jobs = executors.submit(self.kind, ex, fns, self.code_root)
            self._record(jobs, fns, res, record or {})
            submitted.append(SubmittedGroup(res, [run for pack in packs for run in pack], jobs))
            if announce is not None:
                announce(submitted[-1])
        return submitted

    def build_jobs(self, packs: list[list[PlannedRun]], res: Resources) -> list[RunJob]:
        """SLURM: one job (array task) per pack (a pack is one run unless `res.pack` > 1). Local:
        `array_parallelism` workers sharing the list (each starts at a different pack and claims
        runs by lease, `res.pack` at a time). Debug: one job for all."""
        by_pack = [[RunTask(r.run_id, r.name, str(r.dir.resolve()), r.config()) for r in pack] for pack in packs]
        common = dict(code_root=self.code_root, retries=self.executor.retries, rerun_failed=self.rerun_failed,
                      stale_s=self.executor.lease_stale_s, heartbeat_s=self.executor.lease_heartbeat_s,
                      launch_id=self.launch_id, trainer=self.trainer, cpus_per_task=res.cpus_per_task,
                      gpus=res.gpus, runs_at_once=res.pack)
        if self.kind == "slurm":
            return [RunJob(pack, **common) for pack in by_pack]
        tasks = [task for pack in by_pack for task in pack]
        workers = 1 if self.kind == "debug" else min(self.executor.array_parallelism, len(packs))
        offsets = [i * res.pack for i in range(workers)]
        return [RunJob(tasks[i:] + tasks[:i], **common) for i in offsets]

    def _record(self, jobs: list[submitit.Job], fns: list[RunJob], res: Resources, extra: dict[str, Any]) -> None:
        """Add the jobs to the manifest. A local job id is a pid: its start time pins the process,
        so `sweeps.cancel` never signals a later process that reused the pid."""
        # `pack` is recorded only where set, so an unpacked job's entry reads as before packing
        recorded = {k: v for k, v in vars(res).items() if k != "pack" or v != 1}
        entries = [{"job_id": job.job_id, "run_ids": [t.run_id for t in fn.tasks], "executor": self.kind,
                    "launch": self.launch_id, "submitted": rundir.utc_now(), "resources": recorded}
                   | ({"process_start": leases.process_start(int(job.job_id))} if self.kind == "local" else {})
                   | extra
                   for job, fn in zip(jobs, fns)]
        manifest.update(self.sweep_dir, lambda data: data.setdefault("jobs", []).extend(entries))
