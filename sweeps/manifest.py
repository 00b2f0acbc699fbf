"""The sweep folder's `manifest.json` (docs/run_folder.md): grid, plan, git commit, jobs.

Several launches of one grid may update it at once, so every change is a read-modify-write
under an O_EXCL lock file, written to a temporary file and renamed into place.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

MANIFEST = "manifest.json"
_LOCK_STALE_S = 60.0  # the lock is held for one file write; older means its holder died


def utc_now() -> str:
    """ISO-8601 UTC with seconds, as the run folder's timestamps."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_commit(repo: Path) -> str | None:
    """HEAD of the checkout at `repo` (None outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def read(sweep_dir: Path) -> dict[str, Any] | None:
    """The manifest, or None when the sweep folder has none."""
    try:
        return json.loads((Path(sweep_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def _locked(sweep_dir: Path, timeout_s: float = 30.0) -> Iterator[None]:
    lock = Path(sweep_dir) / (MANIFEST + ".lock")
    deadline = time.time() + timeout_s
    while True:
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            try:
                if time.time() - lock.stat().st_mtime > _LOCK_STALE_S:
                    lock.unlink(missing_ok=True)
                    continue
            except FileNotFoundError:
                continue
            if time.time() > deadline:
                raise TimeoutError(f"{lock} is held by another process (delete it if none is running)")
            time.sleep(0.05)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def update(sweep_dir: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply `change` to the manifest (an empty one if absent) atomically; returns the result."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with _locked(sweep_dir):
        data = read(sweep_dir) or {"runs": [], "jobs": []}
        change(data)
        tmp = sweep_dir / f"{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
        os.replace(tmp, sweep_dir / MANIFEST)
    return data


def merge_runs(data: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """Add plan entries to `data["runs"]`, keeping earlier entries (a run id is forever)."""
    known = {r["run_id"] for r in data.setdefault("runs", [])}
    data["runs"].extend(r for r in runs if r["run_id"] not in known)


def runs_by_id(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Manifest run entries keyed by run id."""
    return {r["run_id"]: r for r in data.get("runs", [])}
