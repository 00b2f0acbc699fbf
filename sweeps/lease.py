"""Per-run leases: at most one process trains a run folder at a time, across launches and hosts.

A lease is a small JSON file created with O_CREAT|O_EXCL (atomic on local disks and NFSv3+).
Its holder refreshes the file's mtime every `heartbeat_s`; a lease whose mtime is older than
`stale_s` belongs to a dead process and may be taken over, and so does one whose holder on this
host is no longer running (its pid and process start time are recorded). Takeover is serialised
by a second, short-lived O_EXCL file so two takers cannot both delete-and-recreate. A job requeued by the
scheduler keeps its job id, so it adopts its own lease at once instead of waiting for staleness.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

LEASE_FILE = "lease"
_TAKEOVER_STALE_S = 30.0  # a takeover lock is held for milliseconds; older means its holder died


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat field 22), or None
    when it is gone: pids are reused, the pair (pid, start) names one process for good."""
    try:
        return int(Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def owner_info(job_id: str | None) -> dict[str, Any]:
    """Who is taking a lease: a fresh token plus job id, host and pid (for humans and adoption)."""
    return {"token": uuid.uuid4().hex, "job_id": job_id, "host": socket.gethostname(),
            "pid": os.getpid(), "pid_start": process_start(os.getpid()), "acquired": time.time()}


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _create(path: Path, info: dict[str, Any]) -> bool:
    """Create the lease file exclusively; False when it already exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        json.dump(info, handle)
    return True


def _age(path: Path, now: float) -> float | None:
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return None


def holder(path: Path, stale_s: float, now: float | None = None) -> dict[str, Any] | None:
    """The live holder's info, or None when the lease is free or stale. A holder on this host
    whose process is gone (killed with -9) is stale at once, not `stale_s` later."""
    age = _age(path, time.time() if now is None else now)
    if age is None or age > stale_s:
        return None
    # a lease caught between create and write reads as empty: still live
    info = _read(path) or {"token": None}
    if (info.get("host") == socket.gethostname() and info.get("pid_start") is not None
            and process_start(info["pid"]) != info["pid_start"]):
        return None
    return info


class Lease:
    """A held lease. Use `acquire`; call `start_heartbeat` while working and `release` after."""

    def __init__(self, path: Path, info: dict[str, Any], heartbeat_s: float) -> None:
        self.path = path
        self.info = info
        self.heartbeat_s = heartbeat_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def owned(self) -> bool:
        """Whether the file on disk is still ours (a stalled holder can be taken over)."""
        current = _read(self.path)
        return current is not None and current.get("token") == self.info["token"]

    def refresh(self) -> None:
        """Bump the heartbeat; sets `lost` when someone else took the lease."""
        if not self.owned():
            self.lost.set()
            return
        os.utime(self.path)

    def start_heartbeat(self) -> None:
        """Refresh in a daemon thread until `release`."""
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    self.refresh()
                except OSError:
                    self.lost.set()
                if self.lost.is_set():
                    return

        self._thread = threading.Thread(target=beat, name="sweeps-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and delete the file if it is still ours."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self.owned():
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


def acquire(path: Path, job_id: str | None, *, stale_s: float, heartbeat_s: float) -> Lease | None:
    """Take the lease at `path`, or return None while another live process holds it.

    A stale lease is taken over; a lease held by the same scheduler job id (a requeued job, or a
    job that died without releasing) is adopted.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    info = owner_info(job_id)
    if _create(path, info):
        return Lease(path, info, heartbeat_s)
    current = _read(path)
    same_job = job_id is not None and current is not None and current.get("job_id") == job_id
    if not same_job and holder(path, stale_s) is not None:
        return None
    lock = path.with_name(path.name + ".takeover")
    age = _age(lock, time.time())
    if age is not None and age > _TAKEOVER_STALE_S:
        lock.unlink(missing_ok=True)
    if not _create(lock, info):
        return None
    try:
        # re-check under the lock: the lease may have been refreshed or replaced meanwhile
        again = _read(path)
        if again != current or (not same_job and holder(path, stale_s) is not None):
            return None
        path.unlink(missing_ok=True)
        return Lease(path, info, heartbeat_s) if _create(path, info) else None
    finally:
        lock.unlink(missing_ok=True)
