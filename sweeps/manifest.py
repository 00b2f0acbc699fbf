"""The sweep folder's `manifest.json` (docs/run_folder.md): grid, plan, git commit, jobs.

Several launches of one grid may update it at once, so every change is a read-modify-write
under a `filelock` lock, written to a temporary file and renamed into place.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock, Timeout

from contract.rundir import write_text_atomic

MANIFEST = "manifest.json"
# A run entry's key for the SHA-1 (hex) of its run's identity (`sweeps.plan.identity_digest`), which
# its id is cut from: a later plan tells a different config whose short id collides from the same run
# without reading the run folder. Entries written before it was recorded lack it.
IDENTITY = "identity_digest"
_LOCK_TIMEOUT_S = 60.0  # the lock is held for one file write


def read(sweep_dir: Path) -> dict[str, Any] | None:
    """The manifest, or None when the sweep folder has none."""
    try:
        return json.loads((Path(sweep_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def update(sweep_dir: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply `change` to the manifest (an empty one if absent) atomically; returns the result."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # flock-based: the kernel releases it when its holder dies, so there is no stale lock to guess at
    lock = FileLock(sweep_dir / (MANIFEST + ".lock"), timeout=_LOCK_TIMEOUT_S)
    try:
        with lock:
            data = read(sweep_dir) or {"runs": [], "jobs": []}
            change(data)
            write_text_atomic(sweep_dir / MANIFEST, json.dumps(data, indent=1, default=str) + "\n")
    except Timeout as err:
        raise TimeoutError(f"{lock.lock_file} was held by another launch for over {_LOCK_TIMEOUT_S:.0f} s") from err
    return data


def merge_runs(data: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """Add plan entries to `data["runs"]`, keeping earlier entries (a run id is forever). A known
    run takes the plan's folder (its existing one whenever it has one) and gains the plan's
    coordinates: one id is one config, so the coordinates of every grid naming it hold. An entry
    recorded without its identity digest gains the plan's (the plan gave the id to no other config)."""
    data.setdefault("runs", [])
    known = {r["run_id"]: r for r in data["runs"]}
    for entry in runs:
        if entry["run_id"] in known:
            old = known[entry["run_id"]]
            old.update(name=entry["name"], dir=entry["dir"], coords={**old.get("coords", {}), **entry["coords"]})
            if IDENTITY in entry:
                old.setdefault(IDENTITY, entry[IDENTITY])
        else:
            data["runs"].append(entry)


def run_dir(sweep_dir: Path, entry: dict[str, Any], must_exist: bool = False) -> Path | None:
    """The folder of a manifest run entry, `runs/<name>` inside the sweep folder; None when the
    entry points anywhere else (a hand-edited manifest must never make the engine write outside
    its sweep) or, with `must_exist`, when the folder is absent."""
    rel = Path(str(entry.get("dir") or ""))
    if rel.parent != Path("runs") or rel.name in ("", "..") or rel.is_absolute():
        return None
    path = Path(sweep_dir) / rel
    if not path.resolve().is_relative_to((Path(sweep_dir) / "runs").resolve()):  # a symlink out
        return None
    return path if path.is_dir() or not must_exist else None
