"""The stub trainer and helpers shared by the sweep tests (local, debug and SLURM executors; the
SLURM ones also preempt jobs as a scheduler would).

The stub has `gat.train`'s CLI and run-folder files but no torch: deterministic "stats",
checkpoint every `ckpt_every` steps, resume from it, so scheduling semantics test in seconds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, TypeVar

import yaml

from sweeps import executors
from sweeps.resources import Resources
from sweeps.spec import ExecutorSpec

GOLDEN = Path(__file__).parent / "golden"
T = TypeVar("T")

STUB = textwrap.dedent('''
    """Stub of gat.train for sweep tests: CLI, status.json, stats.jsonl, checkpoint + resume."""
    import json, os, sys, time
    from pathlib import Path
    import yaml

    def write(path, data):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def main():
        cfg = yaml.safe_load(open(sys.argv[1]))
        run = Path(sys.argv[sys.argv.index("--out") + 1])
        run.mkdir(parents=True, exist_ok=True)
        steps, every = cfg["train"]["steps"], cfg["train"]["ckpt_every"]
        delay = float(os.environ.get("STUB_STEP_S", "0.02"))
        status = lambda state, step, reason=None: write(run / "status.json", {
            "state": state, "step": step, "reason": reason, "updated": time.time()})
        with open(run / "stub_runs.jsonl", "a") as log:
            log.write(json.dumps({"start": time.time(), "pid": os.getpid(),
                                  "omp_threads": os.environ.get("OMP_NUM_THREADS"),
                                  "cuda_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\\n")
        ckpt = run / "ckpt.json"
        step = json.loads(ckpt.read_text())["step"] if ckpt.exists() else 0
        path = cfg["data"]["path"]
        if path and not os.path.exists(path):
            status("failed", step, f"FileNotFoundError: no dataset at {path}")
            sys.exit(1)
        stats = run / "stats.jsonl"
        kept = [l for l in (stats.read_text().splitlines() if stats.exists() else [])
                if json.loads(l)["step"] <= step]
        stats.write_text("".join(l + "\\n" for l in kept))
        status("running", step)
        while step < steps:
            time.sleep(delay)
            step += 1
            with open(stats, "a") as out:
                out.write(json.dumps({"step": step, "loss_g": (cfg["seed"] + 1) / step}) + "\\n")
            if step % every == 0 or step == steps:
                write(ckpt, {"step": step})
        status("completed", step)
        with open(run / "stub_runs.jsonl", "a") as log:
            log.write(json.dumps({"end": time.time(), "pid": os.getpid()}) + "\\n")

    main()
''')


def write_grid(path: Path, *, steps: int = 20, ckpt_every: int = 5, zip_axes: dict | None = None,
               executor: dict | None = None, **axes) -> Path:
    """A 3-run grid (seeds 0..2 unless axes say otherwise) on a tiny config."""
    grid = {
        "base": {"model": {"width": 32, "depth": 4, "heads": 2}, "data": {"kind": "fashion_mnist"},
                 "train": {"steps": steps, "ckpt_every": ckpt_every, "batch": 16}},
        "axes": axes or {"seed": [0, 1, 2]},
        "resources": {"gpus": 0, "cpus_per_task": 1, "timeout_min": 10},
        "executor": {"array_parallelism": 2, "retries": 1, "lease_heartbeat_s": 1, "lease_stale_s": 6,
                     **(executor or {})},
    }
    if zip_axes:
        grid["zip"] = [zip_axes]
        if not axes:
            del grid["axes"]
    path.write_text(yaml.safe_dump(grid))
    return path


def wait_for(predicate: Callable[[], T], timeout: float = 60.0, poll: float = 0.1) -> T:
    """Poll until `predicate` returns something truthy and return it; fail after `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError("timed out waiting")


def stats_lines(run_dir: Path) -> int:
    """How many ticks the run has logged so far (0 before its stats.jsonl exists)."""
    try:
        return len((run_dir / "stats.jsonl").read_text().splitlines())
    except OSError:
        return 0


def stub_intervals(sweep: Path) -> list[tuple[float, float]]:
    """(start, end) wall times of every finished stub process in the sweep, to check overlap."""
    out = []
    for path in sorted(sweep.glob("runs/*/stub_runs.jsonl")):
        records = [json.loads(l) for l in path.read_text().splitlines()]
        starts = [r["start"] for r in records if "start" in r]
        ends = [r["end"] for r in records if "end" in r]
        out.extend(zip(starts, ends))
    return out


def starts_per_run(sweep: Path) -> dict[str, int]:
    """How many times each run's stub was started (1 = never ran twice, 2 = one resume)."""
    return {p.parent.name: sum("start" in l for l in p.read_text().splitlines())
            for p in sweep.glob("runs/*/stub_runs.jsonl")}


def preempt(job_id: str) -> None:
    """What a preempting scheduler does: USR2 now; then lift SLURM's 120 s requeue hold."""
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    lift_requeue_hold(job_id)


def lift_requeue_hold(job_id: str) -> None:
    """Start a requeued job now instead of after SLURM's 120 s hold, as an operator would."""
    wait_for(lambda: "Reason=BeginTime" in subprocess.run(["scontrol", "show", "job", job_id],
                                                          capture_output=True, text=True).stdout, timeout=60)
    # slurmd refuses to launch a job whose credential is dated the same second as its kill
    # ("already killed, do not launch batch job": slurm_cred_revoked compares whole seconds) and
    # the job then ends FAILED; the 120 s hold exists for this. Let the clock pass that second.
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)


def golden_sbatch(tmp_path: Path, spec: ExecutorSpec, res: Resources, *, name: str, array_size: int,
                  golden: str) -> str:
    """The sbatch script of an array of `array_size` jobs with `res`, checked against
    tests/golden/`golden` (paths of this machine replaced by <TMP> and <PYTHON>); with
    GATSCALE_REGEN_GOLDEN=1 it rewrites the golden file instead. Returns the script."""
    folder = tmp_path / "sweep" / ".submitit"
    params = executors.slurm_parameters(spec, res, name=name, code_root=str(tmp_path / "sweep" / "code" / "L"))
    text = executors.sbatch_text(params, folder, array_size=array_size)
    text = text.replace(str(tmp_path), "<TMP>").replace(sys.executable, "<PYTHON>")
    if os.environ.get("GATSCALE_REGEN_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        (GOLDEN / golden).write_text(text)
    assert text == (GOLDEN / golden).read_text()
    return text
