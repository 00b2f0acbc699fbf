"""submitit executors for the three places a sweep runs: SLURM, local processes, this process.

`make_executor` turns an `ExecutorSpec` plus one resource group into a configured submitit
executor (`slurm_parameters` is the sbatch side of that, `sbatch_text` its script). `submit` sends jobs as arrays, split at the cluster's MaxArraySize.
`active_jobs` and `cancel` talk to the scheduler (squeue/scancel) or to local job processes.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import submitit

from contract import submitit_private
from sweeps.resources import Resources
from sweeps.spec import ExecutorSpec

DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's default when `scontrol show config` cannot tell


def slurm_available() -> bool:
    """Whether a SLURM controller answers here (`sinfo` works)."""
    if shutil.which("sinfo") is None or shutil.which("srun") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def resolve_kind(kind: str) -> str:
    """`auto` becomes `slurm` where a cluster answers, else `local`; others are kept."""
    if kind != "auto":
        return kind
    return "slurm" if slurm_available() else "local"


def max_array_size() -> int:
    """The cluster's MaxArraySize (array indices go up to MaxArraySize - 1)."""
    try:
        text = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=15).stdout
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_MAX_ARRAY_SIZE
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", text, re.MULTILINE)
    return int(found.group(1)) if found else DEFAULT_MAX_ARRAY_SIZE


def slurm_parameters(spec: ExecutorSpec, res: Resources, *, name: str, code_root: str,
                     timeout_min: int | None = None) -> dict[str, Any]:
    """sbatch parameters (submitit's SlurmExecutor names) for one resource group: one task per
    GPU, so each rank is its own SLURM task and DDP reads SLURM_PROCID/SLURM_NTASKS. A packed job
    (`res.pack` > 1) is one task whose process runs the pack's runs side by side, each on its own
    GPU or all on one: a task per GPU would start the pack once per GPU."""
    params: dict[str, Any] = {
        "job_name": name, "time": int(timeout_min or res.timeout_min), "nodes": res.nodes,
        "ntasks_per_node": 1 if res.pack > 1 else max(1, res.gpus), "cpus_per_task": res.cpus_per_task,
        "array_parallelism": spec.array_parallelism, "signal_delay_s": spec.signal_delay_s,
        # sbatch exports the submitting environment by default, but sites may turn that off
        "setup": [f"export PYTHONPATH={shlex.quote(code_root)}${{PYTHONPATH:+:$PYTHONPATH}}", *spec.setup],
        "additional_parameters": {"requeue": True, **spec.additional_parameters},
    }
    if res.gpus:
        params["gpus_per_node"] = res.gpus
    if res.mem_gb is not None:
        params["mem"] = submitit_private.convert_mem(res.mem_gb)
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(spec, key) is not None:
            params[key] = getattr(spec, key)
    return params


def sbatch_text(params: dict[str, Any], folder: Path, array_size: int) -> str:
    """The sbatch script submitit would write for an array of `array_size` (golden tests)."""
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    return submitit_private.sbatch_string(command, folder, array_size, **params)


def make_executor(
    kind: str, folder: Path, spec: ExecutorSpec, res: Resources, *, name: str, code_root: str,
    timeout_min: int | None = None,
) -> submitit.Executor:
    """A submitit executor for one resource group. `timeout_min` overrides `res.timeout_min`
    (local workers run several runs in a row). The cluster is always named: AutoExecutor alone
    picks slurm as soon as `srun` is on PATH."""
    if kind == "slurm":
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=spec.max_requeues)
        ex.update_parameters(**slurm_parameters(spec, res, name=name, code_root=code_root, timeout_min=timeout_min))
        return ex
    if kind == "local":
        ex = submitit.AutoExecutor(folder=folder, cluster="local", local_max_num_timeout=spec.max_requeues)
        # one process per worker; a multi-GPU run sees its GPUs but trains in one process here
        ex.update_parameters(name=name, timeout_min=int(timeout_min or res.timeout_min),
                             gpus_per_node=res.gpus, tasks_per_node=1)
        return ex
    if kind == "debug":
        return submitit.AutoExecutor(folder=folder, cluster="debug")
    raise ValueError(f"unknown executor kind {kind!r}")


@contextmanager
def python_path(code_root: str) -> Iterator[None]:
    """Put `code_root` first on PYTHONPATH while submitting, so jobs import that code."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (code_root, before) if p)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def submit(kind: str, executor: submitit.Executor, fns: list, code_root: str) -> list[submitit.Job]:
    """Submit callables: SLURM arrays of at most MaxArraySize tasks; local/debug as is."""
    if not fns:
        return []
    chunk = max_array_size() if kind == "slurm" else len(fns)
    jobs: list[submitit.Job] = []
    with python_path(code_root):
        for start in range(0, len(fns), chunk):
            jobs.extend(executor.submit_array(fns[start:start + chunk]))
    return jobs


def active_jobs(kind: str, job_ids: list[str]) -> set[str]:
    """The subset of `job_ids` still queued or running."""
    if not job_ids:
        return set()
    if kind == "slurm":
        return set(slurm_states(job_ids))
    if kind == "local":
        return {j for j in job_ids if _local_alive(j)}
    return set()


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """squeue's state for each listed job still known to it ("123_4" -> "PENDING")."""
    parents = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(parents)],
            capture_output=True, text=True, timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
    return {j: states[j] for j in job_ids if j in states}


def _local_alive(job_id: str) -> bool:
    """A local job id is its controller's pid; check the pid still runs a submitit controller."""
    try:
        cmdline = Path(f"/proc/{int(job_id)}/cmdline").read_bytes()
        state = Path(f"/proc/{int(job_id)}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return False
    return b"submitit" in cmdline and state != "Z"  # an unreaped zombie is over


def cancel(kind: str, job_ids: list[str]) -> list[str]:
    """Cancel jobs; returns the ids a cancel was sent to."""
    live = sorted(active_jobs(kind, job_ids))
    if not live:
        return []
    if kind == "slurm":
        subprocess.run(["scancel", *live], check=False, timeout=60)
    elif kind == "local":
        # SIGINT makes the local controller stop its task, which stops its trainer
        for job_id in live:
            try:
                os.kill(int(job_id), signal.SIGINT)
            except (ProcessLookupError, ValueError):
                pass
        # the controller needs a moment to stop its task; return once it has, as scancel does
        deadline = time.time() + 30
        while active_jobs(kind, live) and time.time() < deadline:
            time.sleep(0.2)
    return live
