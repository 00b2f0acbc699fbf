"""Derived data that runs share (encoded datasets, reference statistics): where it lives, and
building each piece once when concurrent jobs of a sweep all want it at the same moment."""
from __future__ import annotations

import os
import sys
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
