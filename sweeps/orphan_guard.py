"""Run a command that dies with the process that started it:

    python -m sweeps.orphan_guard PARENT_PID COMMAND [ARG...]

A job starts each trainer through this, so a job killed outright (SIGKILL, an OOM kill) never
leaves a trainer writing a run folder whose lease is gone. It asks Linux for SIGTERM when its
parent goes (PR_SET_PDEATHSIG, which survives the exec below), checks that the parent is still
PARENT_PID (it may have died before the request), and then becomes COMMAND. It runs after the
fork, in a process of its own: a `preexec_fn` would run Python between fork and exec, which can
deadlock in a parent with threads (a packed job starts its trainers from threads).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
ORPHANED_EXIT = 128 + signal.SIGTERM  # as if the SIGTERM had come


def main(argv: list[str]) -> int:
    """Entry point: never returns when COMMAND starts; 2 for a bad call, ORPHANED_EXIT when the
    parent is already gone."""
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m sweeps.orphan_guard PARENT_PID COMMAND [ARG...]", file=sys.stderr)
        return 2
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):
        pass  # not Linux: the job's own stop handling (SIGTERM to its children) still applies
    if os.getppid() != int(argv[0]):
        return ORPHANED_EXIT
    os.execvp(argv[1], argv[1:])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
