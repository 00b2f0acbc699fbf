"""Run a command that dies with the process that started it (the sweep engine's jobs use it).

    python -m sweeps.orphan_guard PARENT_PID COMMAND [ARG...]

A job starts each trainer through this, so a job killed outright (SIGKILL, an OOM kill) never
leaves a trainer writing a run folder whose lease is gone. It asks Linux for SIGTERM when its
parent goes (PR_SET_PDEATHSIG, which survives the exec below), checks that the parent is still
PARENT_PID (it may have died before the request), and then becomes COMMAND. It runs after the
fork, in a process of its own: a `preexec_fn` would run Python between fork and exec, which can
deadlock in a parent with threads (a packed job starts its trainers from threads).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys

from contract.cli import Parser, run

PR_SET_PDEATHSIG = 1
ORPHANED_EXIT = 128 + signal.SIGTERM  # as if the SIGTERM had come


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The parent's pid and the command."""
    parser = Parser("sweeps.orphan_guard", __doc__)
    parser.add_argument("parent_pid", type=int, help="the process whose death ends COMMAND (a job's pid)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the program and its arguments to become")
    args = parser.parse_args(argv)
    if not args.command:
        parser.error("no COMMAND to run")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point: becomes COMMAND; ORPHANED_EXIT when the parent is already gone, 2 for bad
    input (an unknown program)."""
    args = parse_args(argv)
    return run(lambda: _become(args.parent_pid, args.command))


def _become(parent_pid: int, command: list[str]) -> int:
    """ORPHANED_EXIT when the parent is gone; otherwise this process becomes ``command``."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):
        pass  # not Linux: the job's own stop handling (SIGTERM to its children) still applies
    if os.getppid() != parent_pid:
        return ORPHANED_EXIT
    os.execvp(command[0], command)  # never returns; a missing program raises FileNotFoundError: `run` reports it


if __name__ == "__main__":
    sys.exit(main())
