"""Derived data that runs share (encoded datasets, reference statistics): where it lives, and
building each piece once when concurrent jobs of a sweep all want it at the same moment."""
from __future__ import annotations

import hashlib
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout


def cache_root() -> Path:
    """Where derived data is cached: `$GATSCALE_CACHE`, default `~/.cache/gatscale`."""
    return Path(os.environ.get("GATSCALE_CACHE") or Path.home() / ".cache" / "gatscale").expanduser()


@contextmanager
def exclusive(target: Path, what: str) -> Iterator[None]:
    """Hold the lock of `target` (the file `<target>.lock` beside it) for the block.

    Callers check for `target` again inside the block: whoever waited here finds it built and
    skips the work. The OS drops the lock when its holder dies, so a crash never wedges a sweep;
    where the filesystem has no flock, filelock falls back to a lock file's existence.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(target.with_name(target.name + ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        # Said once, so a job that waits minutes for another's encoding does not look hung.
        print(f"waiting for another process to finish {what} ({target})", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def seal(path: Path) -> None:
    """Record `path`'s SHA-256 beside it (`<name>.sha256`), after the file itself is in place."""
    digest = _digest_path(path)
    tmp = digest.with_name(digest.name + f".{os.getpid()}.tmp")
    tmp.write_text(_sha256(path) + "\n")
    os.replace(tmp, digest)


def _damage(path: Path) -> str | None:
    """Why the cache file `path` cannot be trusted, or None when it matches its recorded hash."""
    if not path.is_file():
        return "is missing"
    digest = _digest_path(path)
    recorded = digest.read_text().strip() if digest.is_file() else None
    if recorded == _sha256(path):
        return None
    return "does not match its recorded hash" if recorded else "has no recorded hash"


def intact(path: Path, warn: bool = True) -> bool:
    """True when the cache file `path` matches the hash `seal` recorded. A damaged file (or one
    without a hash: an older cache) is False, with a warning naming it (when `warn`), so the
    caller rebuilds it."""
    why = _damage(path)
    if why is not None and warn and path.is_file():
        warnings.warn(f"cache file {path} {why}; rebuilding it", stacklevel=2)
    return why is None


def _cached_files(folder: Path) -> list[Path]:
    """A cache folder's files, its hash files aside (none when the folder is absent)."""
    folder = Path(folder)
    return [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.endswith(".sha256")] \
        if folder.is_dir() else []


def seal_folder(folder: Path) -> None:
    """`seal` every file of a built cache folder."""
    for path in _cached_files(folder):
        seal(path)


def folder_intact(folder: Path, warn: bool = True) -> bool:
    """True when every file of a cache folder matches its recorded hash (see `intact`); the
    first that does not is named in a warning (when `warn`), so the caller rebuilds the folder."""
    files = _cached_files(folder)
    for path in files:
        if (why := _damage(path)) is not None:
            if warn:
                warnings.warn(f"cache file {path} {why}; rebuilding {folder}", stacklevel=2)
            return False
    return bool(files)
