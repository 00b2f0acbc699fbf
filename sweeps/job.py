"""The callable a sweep job runs: claim each of its runs by lease, train it, record what happened.

`RunJob` is a `submitit.helpers.Checkpointable`, so on USR2 (preemption, or the time limit
coming) submitit calls `checkpoint`, which stops the trainer, gives the lease back and resubmits
the same job; the requeued job resumes each run from its checkpoint (the trainer does that when
the run folder has one). A run that fails with an error is retried `retries` times inside the job.

The trainer runs as a subprocess (`python -m gat.train REQUEST --out RUN_DIR`; `trainer` names
another module with the same command line, e.g. a test stub) from the code
root the launcher chose (the repo or a snapshot of it): a crash or an OOM kill then cannot take
the job down before it has recorded the failure, and queued jobs do not import later edits.

Files this writes inside a run folder live in `RUN_DIR/.sweep/`: `lease`, `events.jsonl` (one
line per start/end/skip/retry/interrupt, with job id and restart count), `request.yaml` (the
config asked for), `trainer.log` (the trainer's stdout and stderr).

Multi-GPU jobs start one task per GPU; each task runs this callable. Global rank 0 owns the lease
and the bookkeeping and writes a decision file per attempt; the other ranks follow it, so every
rank starts the trainer (which joins them with DDP from the SLURM task variables) or none does.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import submitit
import yaml

from contract import rundir
from sweeps import lease as leases

_POLL_S = 2.0
_STOP_GRACE_S = 30.0  # how long the trainer gets to exit after SIGTERM before SIGKILL
_REQUEUE_GRACE_S = 5.0  # how long a signal sent to the whole job takes to reach this process too
_FOLLOW_TIMEOUT_S = 600.0
# Exit by these signals means the scheduler is stopping us (preemption, time limit, scancel),
# not a bug in the run: the run stays `running` so the next job resumes it.
_STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


class RunsFailed(RuntimeError):
    """Raised at the end of a job when some of its runs failed, so the scheduler shows FAILED too."""


@dataclass
class RunTask:
    """One run for a job: where its folder is and the config to train."""

    run_id: str
    name: str
    run_dir: str
    config: dict[str, Any]


def _write_failed(run_dir: Path, reason: str) -> None:
    """Record a failure the trainer could not record itself (it crashed or never started)."""
    previous = rundir.read_status(run_dir) or {}
    rundir.write_status(run_dir, "failed", previous.get("step") or 0, reason, previous.get("checkpoint_step"))


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn giving the trainer SIGTERM when the job process dies (even by SIGKILL), so a
    killed job never leaves a trainer writing a folder whose lease is gone. Linux only; the libc
    function is looked up here, in the parent, so the forked child only makes the call."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG


def _requeue_self() -> None:
    """Send this job submitit's preemption signal, whose handler checkpoints `RunJob` and
    requeues it (SLURM: scontrol requeue; local: the controller restarts it). Outside a submitit
    job (the debug executor, a direct call) there is no handler, and nothing is sent."""
    handler = signal.getsignal(signal.SIGUSR2)
    if callable(handler):
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(_STOP_GRACE_S)  # the handler exits the process; this only bounds a slow one


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 4096))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _identity() -> tuple[str, int, int]:
    """(job id, global rank, number of tasks) from submitit's job environment. Outside one
    (the debug executor's `exception()`, or a direct call) the process is a one-task job."""
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:
        return f"inline-{os.getpid()}", 0, 1
    return env.job_id, env.global_rank, env.num_tasks


class RunJob(submitit.helpers.Checkpointable):
    """Train `tasks` one after another, each under its run lease.

    With the local executor several workers share one task list: each claims what is free, so
    the list is drained `array_parallelism` at a time. Returns one outcome dict per task.
    """

    def __init__(
        self, tasks: list[RunTask], *, code_root: str, retries: int, rerun_failed: bool,
        stale_s: float, heartbeat_s: float, launch_id: str, trainer: str = "gat.train",
        cpus_per_task: int = 1,
    ) -> None:
        self.tasks = tasks
        self.cpus_per_task = cpus_per_task
        self.code_root = code_root
        self.retries = retries
        self.rerun_failed = rerun_failed
        self.stale_s = stale_s
        self.heartbeat_s = heartbeat_s
        self.launch_id = launch_id
        self.trainer = trainer
        self._child: subprocess.Popen[bytes] | None = None
        self._stopped_because = ""
        self._lease: leases.Lease | None = None
        self._current: RunTask | None = None
        self._num_tasks = 1

    def __getstate__(self) -> dict[str, Any]:
        # the process handle and the lease thread do not survive a requeue; the lease is released
        state = dict(self.__dict__)
        state.update(_child=None, _lease=None, _current=None)
        return state

    def __call__(self) -> list[dict[str, Any]]:
        job_id, rank, self._num_tasks = _identity()
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if rank > 0:
            return self._follow(job_id, restart)
        outcomes = [self._run_one(task, job_id, restart) for task in self.tasks]
        failed = [o for o in outcomes if o["state"] == "failed"]
        if failed:
            raise RunsFailed("; ".join(f"{o['name']}: {o['reason']}" for o in failed))
        return outcomes

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on USR2: stop the trainer, free the lease, resubmit this job."""
        self._stop_child()
        if self._current is not None:
            rundir.append_event(Path(self._current.run_dir), "interrupted", launch=self.launch_id,
                         job_id=_identity()[0],
                         restart=int(os.environ.get("SLURM_RESTART_COUNT", "0")))
        if self._lease is not None:
            self._lease.release()
        return super().checkpoint(*args, **kwargs)

    # ---- rank 0 ---------------------------------------------------------------------------

    def _run_one(self, task: RunTask, job_id: str, restart: int) -> dict[str, Any]:
        run_dir = Path(task.run_dir)
        base = {"run_id": task.run_id, "name": task.name}
        common = {"launch": self.launch_id, "job_id": job_id, "restart": restart}
        lease = leases.acquire(run_dir / rundir.SWEEP_SUBDIR / leases.LEASE_FILE, job_id,
                               stale_s=self.stale_s, heartbeat_s=self.heartbeat_s)
        if lease is None:
            self._decide(run_dir, job_id, restart, 0, "stop")
            return {**base, "state": "skipped", "reason": "another job holds the run's lease"}
        self._lease, self._current = lease, task
        try:
            if rundir.cancel_requested(run_dir):
                rundir.append_event(run_dir, "cancelled", **common)
                self._decide(run_dir, job_id, restart, 0, "stop")
                return {**base, "state": "cancelled", "reason": "cancelled by sweeps.cancel before it started"}
            status = rundir.read_status(run_dir) or {}
            state = status.get("state")
            if state in rundir.FINAL_STATES or (state == "failed" and not self.rerun_failed):
                rundir.append_event(run_dir, "skip", state=state, **common)
                self._decide(run_dir, job_id, restart, 0, "stop")
                return {**base, "state": state, "reason": status.get("reason")}
            lease.start_heartbeat()
            for attempt in range(self.retries + 1):
                rundir.append_event(run_dir, "start", attempt=attempt, **common)
                self._decide(run_dir, job_id, restart, attempt, "run")
                state, reason = self._train(task, lease)
                rundir.append_event(run_dir, "end", attempt=attempt, state=state, reason=reason, **common)
                if state != "failed" or attempt == self.retries:
                    break
                rundir.append_event(run_dir, "retry", attempt=attempt + 1, **common)
            self._decide(run_dir, job_id, restart, attempt + 1, "stop")
            return {**base, "state": state, "reason": reason}
        finally:
            lease.release()
            self._lease, self._current = None, None

    def _train(self, task: RunTask, lease: leases.Lease) -> tuple[str, str | None]:
        """One trainer process over the run folder; returns (state, reason)."""
        run_dir = Path(task.run_dir)
        log = run_dir / rundir.SWEEP_SUBDIR / rundir.TRAINER_LOG
        rc = self._start_and_wait(task, lease)
        if rc is None:
            return "interrupted", self._stopped_because
        status = rundir.read_status(run_dir) or {}
        state = status.get("state")
        if state in rundir.SETTLED_STATES:
            return state, status.get("reason")
        if rc < 0 and -rc in _STOP_SIGNALS:
            # The trainer checkpointed at the signal. When the scheduler signalled the whole job,
            # submitit's USR2 handler requeues it and never returns here; give that signal a
            # moment to arrive. A trainer signalled alone (SLURM's SIGTERM reaches every process,
            # which submitit ignores; an admin's kill) would otherwise leave the run interrupted
            # until the next launch: requeue through the same handler.
            time.sleep(_REQUEUE_GRACE_S)
            _requeue_self()
            return "interrupted", f"trainer stopped by signal {-rc}"
        reason = f"trainer exited with code {rc} without a final state: {_log_tail(log)}"
        _write_failed(run_dir, reason)
        return "failed", reason

    def _start_and_wait(self, task: RunTask, lease: leases.Lease | None) -> int | None:
        """Run the trainer to its end; None when it was stopped because the lease was lost or
        the run was cancelled (`_stopped_because` says which). The run then stays `running`
        and resumes from its checkpoint at the next launch."""
        run_dir = Path(task.run_dir)
        folder = run_dir / rundir.SWEEP_SUBDIR
        folder.mkdir(parents=True, exist_ok=True)
        request = folder / "request.yaml"
        if lease is not None:  # rank 0 writes it; followers read the same file
            rundir.write_text_atomic(request, yaml.safe_dump(task.config, sort_keys=False))
            # a dead job's trainer (SIGTERM by PR_SET_DEATHSIG) may still be checkpointing: a
            # trainer started now would be refused the folder and the run recorded `failed`
            if not rundir.wait_for_writer(run_dir, _STOP_GRACE_S + 10):
                self._stopped_because = "another process still writes the run folder"
                return None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (self.code_root, env.get("PYTHONPATH")) if p)
        # torch starts one thread per core it sees, and SLURM without task/cgroup (or the local
        # executor) shows every core to every job: runs sharing a box then spin against each
        # other (measured: 0.45 -> 3 s a step for two CPU runs on 2 cores). Use the allotment,
        # whatever the launching shell set: CPU results repeat bit for bit only at one thread
        # count, so it must follow the grid, not the executor or the shell.
        env["OMP_NUM_THREADS"] = str(self.cpus_per_task)
        with open(folder / rundir.TRAINER_LOG, "ab") as log:
            self._child = subprocess.Popen(
                [sys.executable, "-m", self.trainer, str(request), "--out", str(run_dir)],
                cwd=self.code_root, env=env, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent(),
            )
            try:
                while True:
                    try:
                        return self._child.wait(timeout=_POLL_S)
                    except subprocess.TimeoutExpired:
                        if lease is not None and lease.lost.is_set():
                            self._stopped_because = "the lease was taken over (this job stalled past lease_stale_s)"
                        elif lease is not None and rundir.cancel_requested(run_dir):
                            self._stopped_because = "cancelled by sweeps.cancel"
                        else:
                            continue
                        self._stop_child()
                        return None
            except BaseException:
                # cancelled (KeyboardInterrupt from the local controller) or exiting: never leave
                # a trainer writing a folder whose lease is about to be freed
                self._stop_child()
                raise

    def _stop_child(self) -> None:
        child = self._child
        if child is None or child.poll() is not None:
            return
        # poll() never blocks on Popen's wait lock, which the interrupted main thread may hold
        # when this runs inside submitit's signal handler; wait() could deadlock there
        child.terminate()
        deadline = time.time() + _STOP_GRACE_S
        while child.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        if child.poll() is None:
            child.kill()
            while child.poll() is None and time.time() < deadline + 5:
                time.sleep(0.1)

    # ---- multi-GPU followers ------------------------------------------------------------

    def _decide(self, run_dir: Path, job_id: str, restart: int, attempt: int, decision: str) -> None:
        """Tell follower ranks whether to start attempt `attempt` (only multi-task jobs)."""
        if self._num_tasks > 1:
            path = run_dir / rundir.SWEEP_SUBDIR / f"decision.{job_id}.{restart}.{attempt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(decision)

    def _follow(self, job_id: str, restart: int) -> list[dict[str, Any]]:
        """Ranks > 0: start the trainer whenever rank 0 does, for each task and attempt."""
        outcomes = []
        for task in self.tasks:
            folder = Path(task.run_dir) / rundir.SWEEP_SUBDIR
            attempt = 0
            while self._await(folder / f"decision.{job_id}.{restart}.{attempt}") == "run":
                self._start_and_wait(task, None)
                attempt += 1
            outcomes.append({"run_id": task.run_id, "name": task.name, "state": "follower"})
        return outcomes

    @staticmethod
    def _await(path: Path) -> str:
        deadline = time.time() + _FOLLOW_TIMEOUT_S
        while time.time() < deadline:
            try:
                return path.read_text().strip()
            except FileNotFoundError:
                time.sleep(0.5)
        return "stop"
