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

A packed job (`runs_at_once` > 1, from the grid's `pack: {runs_per_job: N}`) runs up to N of its
runs side by side, one thread and one trainer child per run (a "slot"): each run keeps its own
lease, events, status and log, gets `cpus_per_task // N` threads and, when the job has a GPU per
run, its own GPU through CUDA_VISIBLE_DEVICES (else the runs share the job's GPU; an MPS share is
future work). A run that fails, diverges or collapses ends only its own slot; USR2 checkpoints
every slot, and the requeued job skips the runs that finished and resumes the others from their
own checkpoints; a `sweeps.cancel` request stops only its run's trainer.

Multi-GPU jobs start one task per GPU; each task runs this callable. Global rank 0 owns the lease
and the bookkeeping and writes a decision file per attempt; the other ranks follow it, so every
rank starts the trainer (which joins them with DDP from the SLURM task variables) or none does.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class _Stopped(BaseException):
    """Unwinds a packed job's run thread once the job is stopping (checkpointed for a requeue, or
    cancelled): as the SystemExit of submitit's handler unwinds a one-run job, it leaves the run
    `running` with no `end` event, for the requeued job to resume."""


@dataclass
class RunTask:
    """One run for a job: where its folder is and the config to train."""

    run_id: str
    name: str
    run_dir: str
    config: dict[str, Any]


@dataclass
class _Slot:
    """One run in flight: its trainer child, lease and task, and why it was stopped. A job has one
    slot per run it runs at once (a packed job's `index` picks the run's GPU)."""

    index: int = 0
    child: subprocess.Popen[bytes] | None = None
    lease: leases.Lease | None = None
    current: RunTask | None = None
    stopped_because: str = ""


def _write_failed(run_dir: Path, reason: str) -> None:
    """Record a failure the trainer could not record itself (it crashed or never started)."""
    previous = rundir.read_status(run_dir) or {}
    rundir.write_status(run_dir, "failed", previous.get("step") or 0, reason, previous.get("checkpoint_step"))


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
    """Train `tasks` one after another (`runs_at_once` at a time for a pack), each under its run lease.

    With the local executor several workers share one task list: each claims what is free, so
    the list is drained `array_parallelism` (times `runs_at_once`) at a time. Returns one outcome
    dict per task.
    """

    def __init__(
        self, tasks: list[RunTask], *, code_root: str, retries: int, rerun_failed: bool,
        stale_s: float, heartbeat_s: float, launch_id: str, trainer: str = "gat.train",
        cpus_per_task: int = 1, gpus: int = 0, runs_at_once: int = 1,
    ) -> None:
        """`cpus_per_task` and `gpus` are the job's; `runs_at_once` runs share them (a pack)."""
        self.tasks = tasks
        self.cpus_per_task = cpus_per_task
        self.gpus = gpus
        self.runs_at_once = runs_at_once
        self.code_root = code_root
        self.retries = retries
        self.rerun_failed = rerun_failed
        self.stale_s = stale_s
        self.heartbeat_s = heartbeat_s
        self.launch_id = launch_id
        self.trainer = trainer
        self._num_tasks = 1
        self._reset()

    def _reset(self) -> None:
        """Fresh per-process state: the slots, and the stop flag and lock their threads share."""
        self._slots = [_Slot(i) for i in range(max(1, self.runs_at_once))]
        self._stopping = threading.Event()
        self._requeue_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # process handles, lease threads, events and locks do not survive a requeue (nor pickle);
        # the leases are released, and `__call__` makes fresh ones
        state = dict(self.__dict__)
        state.update(_slots=None, _stopping=None, _requeue_lock=None)
        return state

    def __call__(self) -> list[dict[str, Any]]:
        self._reset()
        job_id, rank, self._num_tasks = _identity()
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if rank > 0:
            return self._follow(job_id, restart)
        if self.runs_at_once > 1:
            outcomes = self._run_side_by_side(job_id, restart)
        else:
            outcomes = [self._run_one(task, job_id, restart, self._slots[0]) for task in self.tasks]
        failed = [o for o in outcomes if o["state"] == "failed"]
        if failed:
            raise RunsFailed("; ".join(f"{o['name']}: {o['reason']}" for o in failed))
        return outcomes

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on USR2: stop every trainer, free the leases, resubmit this job."""
        self._stopping.set()  # a packed job's run threads then unwind instead of moving on
        # taken before stopping: a packed job's run thread clears its slot once its trainer ends
        held = [(slot.current, slot.lease) for slot in self._slots]
        self._stop_children(self._slots)
        for current, lease in held:
            if current is not None:
                rundir.append_event(Path(current.run_dir), "interrupted", launch=self.launch_id,
                                    job_id=_identity()[0],
                                    restart=int(os.environ.get("SLURM_RESTART_COUNT", "0")))
            if lease is not None:
                lease.release()
        return super().checkpoint(*args, **kwargs)

    # ---- rank 0 ---------------------------------------------------------------------------

    def _run_side_by_side(self, job_id: str, restart: int) -> list[dict[str, Any]]:
        """A packed job: one thread per slot, each taking the next task of the list until none is
        left, so up to `runs_at_once` runs train at once and one run's end never stops another.
        The main thread only waits, so submitit's USR2 handler (which runs there) can checkpoint
        every slot; a stop reaching it (that handler's exit, the local controller's interrupt)
        stops every trainer before it unwinds."""
        pending = iter(self.tasks)
        outcomes: dict[str, dict[str, Any]] = {}
        errors: list[BaseException] = []
        lock = threading.Lock()

        def work(slot: _Slot) -> None:
            try:
                while not self._stopping.is_set():
                    with lock:
                        task = next(pending, None)
                    if task is None:
                        return
                    outcomes[task.run_id] = self._run_one(task, job_id, restart, slot)
            except _Stopped:
                pass
            except BaseException as err:  # re-raised by the main thread once the others end
                errors.append(err)

        # A slot's thread starts its trainer and waits for it: PR_SET_PDEATHSIG fires when the
        # forking thread (not the process) ends, so no trainer may outlive the thread that made it.
        # Daemon threads, so the handler's exit is not held up by a thread still unwinding.
        threads = [threading.Thread(target=work, args=(slot,), daemon=True, name=f"run-slot-{slot.index}")
                   for slot in self._slots]
        try:
            for thread in threads:
                thread.start()
            while any(thread.is_alive() for thread in threads):
                for thread in threads:
                    thread.join(timeout=_POLL_S)
        except BaseException:
            self._stopping.set()
            self._stop_children(self._slots)
            raise
        if errors:
            raise errors[0]
        return [outcomes[t.run_id] for t in self.tasks if t.run_id in outcomes]

    def _run_one(self, task: RunTask, job_id: str, restart: int, slot: _Slot) -> dict[str, Any]:
        run_dir = Path(task.run_dir)
        base = {"run_id": task.run_id, "name": task.name}
        common = {"launch": self.launch_id, "job_id": job_id, "restart": restart}
        lease = leases.acquire(run_dir / rundir.SWEEP_SUBDIR / leases.LEASE_FILE, job_id,
                               stale_s=self.stale_s, heartbeat_s=self.heartbeat_s)
        if lease is None:
            self._decide(run_dir, job_id, restart, 0, "stop")
            return {**base, "state": "skipped", "reason": "another job holds the run's lease"}
        slot.lease, slot.current = lease, task
        try:
            if self._stopping.is_set():  # the job began stopping while this slot took the lease
                raise _Stopped()
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
                state, reason = self._train(task, lease, slot)
                if self._stopping.is_set():
                    raise _Stopped()
                rundir.append_event(run_dir, "end", attempt=attempt, state=state, reason=reason, **common)
                if state != "failed" or attempt == self.retries:
                    break
                rundir.append_event(run_dir, "retry", attempt=attempt + 1, **common)
            self._decide(run_dir, job_id, restart, attempt + 1, "stop")
            return {**base, "state": state, "reason": reason}
        finally:
            lease.release()
            slot.lease, slot.current = None, None

    def _train(self, task: RunTask, lease: leases.Lease, slot: _Slot) -> tuple[str, str | None]:
        """One trainer process over the run folder; returns (state, reason)."""
        run_dir = Path(task.run_dir)
        log = run_dir / rundir.SWEEP_SUBDIR / rundir.TRAINER_LOG
        rc = self._start_and_wait(task, lease, slot)
        if rc is None:
            return "interrupted", slot.stopped_because
        if self._stopping.is_set():  # checkpoint() stopped it: the requeued job resumes the run
            return "interrupted", "the job is stopping"
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
            # every trainer of a pack gets SLURM's SIGTERM: one requeue is for all of them
            with self._requeue_lock:
                if not self._stopping.is_set():
                    _requeue_self()
            return "interrupted", f"trainer stopped by signal {-rc}"
        reason = f"trainer exited with code {rc} without a final state: {_log_tail(log)}"
        _write_failed(run_dir, reason)
        return "failed", reason

    def _start_and_wait(self, task: RunTask, lease: leases.Lease | None, slot: _Slot) -> int | None:
        """Run the trainer to its end; None when it was stopped because the lease was lost or
        the run was cancelled (`slot.stopped_because` says which). The run then stays `running`
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
                slot.stopped_because = "another process still writes the run folder"
                return None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (self.code_root, env.get("PYTHONPATH")) if p)
        # torch starts one thread per core it sees, and SLURM without task/cgroup (or the local
        # executor) shows every core to every job: runs sharing a box then spin against each
        # other (measured: 0.45 -> 3 s a step for two CPU runs on 2 cores). Use the allotment,
        # whatever the launching shell set: CPU results repeat bit for bit only at one thread
        # count, so it must follow the grid, not the executor or the shell.
        # A pack splits the job's cores among its runs, and gives each run a GPU of its own when
        # the job has one per run (SLURM names the job's GPUs in CUDA_VISIBLE_DEVICES).
        env["OMP_NUM_THREADS"] = str(max(1, self.cpus_per_task // self.runs_at_once))
        if self.runs_at_once > 1 and self.gpus >= self.runs_at_once:
            visible = env.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(self.gpus)))).split(",")
            env["CUDA_VISIBLE_DEVICES"] = visible[slot.index % len(visible)]
        with open(folder / rundir.TRAINER_LOG, "ab") as log:
            slot.child = subprocess.Popen(
                [sys.executable, "-m", "sweeps.orphan_guard", str(os.getpid()),
                 sys.executable, "-m", self.trainer, str(request), "--out", str(run_dir)],
                cwd=self.code_root, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
            try:
                while True:
                    try:
                        return slot.child.wait(timeout=_POLL_S)
                    except subprocess.TimeoutExpired:
                        if lease is not None and lease.lost.is_set():
                            slot.stopped_because = "the lease was taken over (this job stalled past lease_stale_s)"
                        elif lease is not None and rundir.cancel_requested(run_dir):
                            slot.stopped_because = "cancelled by sweeps.cancel"
                        else:
                            continue
                        self._stop_children([slot])
                        return None
            except BaseException:
                # cancelled (KeyboardInterrupt from the local controller) or exiting: never leave
                # a trainer writing a folder whose lease is about to be freed
                self._stop_children([slot])
                raise

    @staticmethod
    def _stop_children(slots: list[_Slot]) -> None:
        """SIGTERM the slots' trainers at once (each checkpoints), then SIGKILL those still alive
        after _STOP_GRACE_S."""
        children = [s.child for s in slots if s.child is not None and s.child.poll() is None]
        # poll() never blocks on Popen's wait lock, which the interrupted main thread may hold
        # when this runs inside submitit's signal handler; wait() could deadlock there
        for child in children:
            child.terminate()
        deadline = time.time() + _STOP_GRACE_S
        while any(c.poll() is None for c in children) and time.time() < deadline:
            time.sleep(0.1)
        for child in children:
            if child.poll() is None:
                child.kill()
        while any(c.poll() is None for c in children) and time.time() < deadline + 5:
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
                self._start_and_wait(task, None, self._slots[0])
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
