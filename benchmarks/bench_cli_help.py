"""Benchmark: `python -m MODULE --help` and `--version` of every gatscale command line.

A user's first contact with a command is its `--help`; one that imports torch before parsing
makes it wait 6–14 s on a busy 2-core machine. Times each as a subprocess (interpreter start
included; best of `--repeat`) and checks the target: every one under 1 s.

    python benchmarks/bench_cli_help.py [--repeat 3] [--flag --help --version]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gat", "sweeps", "analysis")
TARGET_S = 1.0


def commands() -> list[str]:
    """Every `python -m` entry point: modules with a `__main__` guard, packages with `__main__.py`."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__main__":
                found.append(".".join(parts[:-1]))
            elif 'if __name__ == "__main__":' in path.read_text():
                found.append(".".join(parts))
    return sorted(set(found))


def time_command(module: str, flag: str, repeat: int) -> tuple[float, int]:
    """(best wall seconds, exit status) of `python -m module flag`, run in the checkout."""
    best, status = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", module, flag], cwd=ROOT, capture_output=True)
        best = min(best, time.perf_counter() - start)
        status = status or done.returncode
    return best, status


def main() -> int:
    """Print one line per command and flag; exit 1 when any is over the target or fails."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per command (the best is reported)")
    parser.add_argument("--flag", nargs="+", default=["--help", "--version"], help="flags to time")
    args = parser.parse_args()
    slow = []
    print(f"{'command':<28} " + " ".join(f"{flag:>10}" for flag in args.flag))
    for module in commands():
        cells = []
        for flag in args.flag:
            seconds, status = time_command(module, flag, args.repeat)
            cells.append(f"{seconds:>9.2f}s" if status == 0 else f"{'exit ' + str(status):>10}")
            if status or seconds >= TARGET_S:
                slow.append(f"{module} {flag}")
        print(f"{module:<28} " + " ".join(cells), flush=True)
    print(f"target: every command under {TARGET_S:g} s: " + ("met" if not slow else f"missed by {', '.join(slow)}"))
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
