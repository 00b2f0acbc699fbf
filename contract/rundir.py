"""Writers for the run folder (docs/run_folder.md): status, stats lines, provenance, model card.

Readers (the sweep engine, the analysis layer) may look at any moment, so whole-file writes go
through `write_json_atomic` and stats lines are appended and flushed one at a time.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import warnings
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import orjson
from filelock import FileLock, Timeout

from contract import __version__
from contract.errors import UserError

STATES = ("running", "completed", "diverged", "collapsed", "failed")
FINAL_STATES = ("completed", "diverged", "collapsed")
SETTLED_STATES = (*FINAL_STATES, "failed")  # nothing more happens to the run unless asked (--rerun-failed)
# A sweep's view of a run adds `pending` (never started) and `interrupted` (status.json says
# running, but no job holds the run's lease: the next launch resumes it).
SWEEP_STATES = ("pending", "running", "interrupted", *SETTLED_STATES)
PACKAGES = ("torch", "numpy", "diffusers", "wandb", "scipy", "pyyaml", "safetensors", "submitit", "tqdm")

CONFIG = "config.yaml"
MODEL = "model.json"
PROVENANCE = "provenance.json"
STATUS = "status.json"
STATS = "stats.jsonl"
WANDB_ID = "wandb_id"
SAMPLES = "samples"
LOCK = "trainer.lock"
LOCK_HOLDER = "trainer.lock.json"
SWEEP_SUBDIR = ".sweep"  # the sweep engine's own files inside a run folder
TRAINER_LOG = "trainer.log"  # in SWEEP_SUBDIR: the trainer's stdout and stderr
EVENTS = "events.jsonl"  # in SWEEP_SUBDIR: what the jobs did to the run, one line per event
CANCEL_REQUEST = "cancel.json"  # in SWEEP_SUBDIR: `sweeps.cancel` asks for this run to stop


def utc_now() -> str:
    """The current time as ISO-8601 UTC with seconds (what every timestamp here uses)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file so that a reader sees the old one or the new one, never half of one. On
    failure (a full disk, a read-only file system) the temp file is removed and the old file
    stays; the OSError propagates."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # read-only: nothing was created either
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON atomically (see `write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> Any | None:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_status(run_dir: Path, state: str, step: int, reason: str | None = None,
                 checkpoint_step: int | None = None) -> None:
    """Record the run's state (`running|completed|diverged|failed`) at `step`, and the step of
    its last written checkpoint (what a resume starts from; absent when not known)."""
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    record = {"state": state, "step": step, "reason": reason, "updated": utc_now()}
    if checkpoint_step is not None:
        record["checkpoint_step"] = checkpoint_step
    write_json_atomic(run_dir / STATUS, record)


def lock_writer(run_dir: Path) -> FileLock:
    """Take the run folder's writer lock (held by the OS until released or the process dies),
    so two trainers never interleave one folder; refuse, naming the holder, when it is taken."""
    lock = FileLock(run_dir / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = read_json(run_dir / LOCK_HOLDER) or {}
        raise UserError(
            f"{run_dir} is being trained by another process (host {holder.get('host', '?')}, "
            f"pid {holder.get('pid', '?')}, since {holder.get('since', '?')}); wait for it or use another --out folder"
        ) from None
    try:
        write_json_atomic(run_dir / LOCK_HOLDER, {"host": socket.gethostname(), "pid": os.getpid(), "since": utc_now()})
    except BaseException:
        lock.release()
        raise
    return lock


def wait_for_writer(run_dir: Path, timeout_s: float) -> bool:
    """Wait until no process holds the run folder's writer lock (at most `timeout_s`); True
    when it is free. A trainer whose job died is still checkpointing for a few seconds."""
    lock = FileLock(Path(run_dir) / LOCK)
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:
        return False
    lock.release()
    return True


def set_aside(path: Path) -> Path | None:
    """Rename a non-empty file to `<name>.<UTC time>` (never delete a run's history); return the new path."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    target = path.with_name(f"{path.name}.{utc_now().replace(':', '')}")
    os.replace(path, target)
    return target


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The run's status.json, or None when the run never started."""
    return read_json(run_dir / STATUS)


def append_stats(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one stats line (NaN/inf are written as null: JSON has no spelling for them)."""
    line = json.dumps(_finite(record), allow_nan=False)
    with open(run_dir / STATS, "a") as handle:
        handle.write(line + "\n")
        handle.flush()


def parse_json_lines(lines: Iterable[str]) -> list[Any]:
    """The lines that parse as JSON, in order (a torn line from a killed writer is skipped)."""
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def read_stats(run_dir: Path) -> list[dict[str, Any]]:
    """All complete stats lines (a torn last line from a killed process is skipped)."""
    try:
        return parse_json_lines((Path(run_dir) / STATS).read_text().splitlines())
    except FileNotFoundError:
        return []


def read_eval_stats(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Eval lines of stats.jsonl (those with a non-empty ``metrics``), and, only when there is
    none, its last parseable line.

    Fast path: only lines that carry ``"metrics"`` are parsed (eval ticks are a small fraction
    of log ticks), all in one ``orjson.loads`` of a JSON array; a torn line (a crash mid-write)
    sends the file to the line-by-line path, which skips it.
    """
    try:
        text = (Path(run_dir) / STATS).read_text()
    except FileNotFoundError:
        return [], {}
    lines = [line for line in text.splitlines() if '"metrics"' in line]
    try:
        # orjson: ~2.5x the stdlib's speed on these lines, the largest cost of a big study's load
        parsed = orjson.loads("[" + ",".join(lines) + "]")
    except orjson.JSONDecodeError:  # also NaN, which only the stdlib's parser reads
        parsed = parse_json_lines(lines)
    evals = [data for data in parsed if isinstance(data, dict) and data.get("metrics")]
    if evals:
        return evals, {}
    for line in reversed(text.splitlines()):
        last = parse_json_lines([line])
        if last and isinstance(last[0], dict):
            return [], last[0]
    return [], {}


def read_stats_tail(run_dir: Path, max_bytes: int = 65536) -> list[dict[str, Any]]:
    """The stats lines in the file's last `max_bytes`, oldest first: what a progress display
    needs, without reading a long run's whole log."""
    try:
        with open(Path(run_dir) / STATS, "rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, end - max_bytes))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    return [d for d in parse_json_lines(lines) if isinstance(d, dict)]


def truncate_stats(run_dir: Path, step: int) -> None:
    """Drop stats lines after `step`: on resume they are recomputed from the checkpoint at `step`.

    A line that does not parse is not silently lost: a torn last line (a kill mid-write) is
    dropped, while a damaged line before it is moved to `stats.jsonl.corrupt` with a warning.
    """
    path = run_dir / STATS
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept, corrupt = [], []
    for index, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            if index < len(lines) - 1 and line.strip():
                corrupt.append(line)
            continue
        if record.get("step", 0) <= step:
            kept.append(json.dumps(record, allow_nan=False))
    if corrupt:
        with open(path.with_name(STATS + ".corrupt"), "a") as aside:
            aside.write("".join(line + "\n" for line in corrupt))
        warnings.warn(f"{path}: {len(corrupt)} damaged line(s) moved to {STATS}.corrupt")
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


SOURCE_ROOT = Path(__file__).resolve().parent.parent


def source_checkout(root: Path = SOURCE_ROOT) -> Path | None:
    """The git checkout of gatscale's own source, or None when gatscale runs from an install.

    A wheel installed into a venv that sits inside the user's own repository is inside *a* git
    work tree too; only a work tree whose top level is the folder holding the `gat` package and
    gatscale's pyproject.toml is gatscale's checkout.
    """
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not top or Path(top).resolve() != root.resolve() or not (root / "pyproject.toml").is_file():
        return None
    return root


def git_state(root: Path = SOURCE_ROOT) -> tuple[str | None, bool | None]:
    """(commit, dirty) of gatscale's source checkout, or (None, None) when it runs from an install."""
    repo = source_checkout(root)
    if repo is None:
        return None, None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        porcelain = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo, capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(porcelain.strip())


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def record_attempt(run_dir: Path, device: str, resumed_from_step: int, threads: int) -> dict[str, Any]:
    """Update provenance.json for this attempt (code and host as of now, attempts appended).

    `threads` is torch's intra-op thread count: on a CPU, float reductions split over threads
    round differently, so a run repeats bit for bit only with the same count.
    """
    path = run_dir / PROVENANCE
    previous = read_json(path) or {}
    commit, dirty = git_state()
    host = socket.gethostname()
    attempt = {
        "started": utc_now(),
        "host": host,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        "resumed_from_step": resumed_from_step,
        "threads": threads,
    }
    provenance = {
        "gatscale_version": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "packages": package_versions(),
        "host": host,
        "device": device,
        "threads": threads,
        "attempts": list(previous.get("attempts", [])) + [attempt],
    }
    write_json_atomic(path, provenance)
    return provenance


def append_event(run_dir: Path, event: str, **fields: Any) -> None:
    """Append one line to RUN_DIR/.sweep/events.jsonl (a single write, so lines never interleave)."""
    folder = Path(run_dir) / SWEEP_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    record = {"time": utc_now(), "event": event, "host": socket.gethostname(), "pid": os.getpid(), **fields}
    fd = os.open(folder / EVENTS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (json.dumps(record, default=str) + "\n").encode())
    finally:
        os.close(fd)


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """All events of a run (unparseable lines skipped)."""
    try:
        return parse_json_lines((Path(run_dir) / SWEEP_SUBDIR / EVENTS).read_text().splitlines())
    except OSError:
        return []


def request_cancel(run_dir: Path) -> None:
    """Ask whichever job holds (or will hold) the run to stop it; the next launch clears it."""
    folder = Path(run_dir) / SWEEP_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / CANCEL_REQUEST, {"requested": utc_now(), "pid": os.getpid()})


def clear_cancel(run_dir: Path) -> None:
    """Withdraw a cancel request (a launch submitting the run again)."""
    (Path(run_dir) / SWEEP_SUBDIR / CANCEL_REQUEST).unlink(missing_ok=True)


def cancel_requested(run_dir: Path) -> bool:
    """Whether `sweeps.cancel` asked for this run to stop."""
    return (Path(run_dir) / SWEEP_SUBDIR / CANCEL_REQUEST).is_file()
