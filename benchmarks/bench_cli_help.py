"""Benchmark: `python -m MODULE --help` and `--version` of every gatscale command line.

A user's first contact with a command is its `--help`; one that imports torch before parsing
makes it wait 6–14 s on a busy 2-core machine. Times each as a subprocess (interpreter start
included; best of `--repeat`) in this checkout and, with `--before REV`, in that commit's code,
and checks the target: every one under 1 s in this checkout.

    python benchmarks/bench_cli_help.py [--repeat 3] [--flag=--help] [--before REV]

`python benchmarks/bench_cli_help.py --before 8e6247f`, 2026-12-04 on the shared 2-core machine
(busy: a study and three other sessions), best of 3, seconds; before = 8e6247f, where every CLI
but sweeps.launch/status/cancel imported torch, pandas, matplotlib or optuna before parsing (a
single run minutes earlier, under more load, had analysis.ablations --help at 13.7 s):

    command                         before --help before --version     after --help  after --version
    analysis.ablations                      8.40s            4.19s            0.06s            0.06s
    analysis.plot_lr_transfer               1.90s            2.24s            0.06s            0.05s
    analysis.plot_scaling                   2.38s            2.05s            0.06s            0.07s
    gat.bench                               1.60s            1.83s            0.04s            0.04s
    gat.coord_check                         1.79s            1.68s            0.13s            0.16s
    gat.fid                                 1.99s            2.03s            0.06s            0.05s
    gat.models                              1.90s            1.74s            0.12s            0.11s
    gat.prepare                             2.54s            1.79s            0.06s            0.06s
    gat.sample                              1.82s            1.88s            0.04s            0.05s
    gat.train                               2.11s            2.05s            0.07s            0.07s
    sweeps.cancel                           0.19s            0.22s            0.18s            0.20s
    sweeps.launch                           0.25s            0.23s            0.25s            0.22s
    sweeps.status                           0.24s            0.24s            0.22s            0.20s
    sweeps.tune                             2.47s            2.22s            0.07s            0.06s

target: every command under 1 s: met (sweeps.* import submitit, ~0.2 s, which they need).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_step import extract  # noqa: E402
PACKAGES = ("contract", "gat", "sweeps", "analysis")
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


def time_command(module: str, flag: str, repeat: int, code_root: Path = ROOT) -> tuple[float, int]:
    """(best wall seconds, exit status) of `python -m module flag`, run in `code_root` (its
    packages are found first, before the installed checkout)."""
    best, status = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", module, flag], cwd=code_root, capture_output=True)
        best = min(best, time.perf_counter() - start)
        status = status or done.returncode
    return best, status


def main() -> int:
    """Print one line per command and flag; exit 1 when any is over the target or fails."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per command (the best is reported)")
    parser.add_argument("--flag", nargs="+", default=["--help", "--version"], help="flags to time")
    parser.add_argument("--before", metavar="REV", help="also time the commands of this commit (e.g. 8e6247f)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        roots = {"after": ROOT}
        if args.before:
            roots = {"before": extract(args.before, Path(tmp), PACKAGES), **roots}
        return report(roots, args.flag, args.repeat)


def report(roots: dict[str, Path], flags: list[str], repeat: int) -> int:
    """The table for each code root (before, after) and flag; 1 when this checkout misses the target."""
    slow = []
    print(f"{'command':<28} " + " ".join(" ".join(f"{name + ' ' + flag:>16}" for flag in flags) for name in roots))
    for module in commands():
        cells = []
        for name, root in roots.items():
            for flag in flags:
                seconds, status = time_command(module, flag, repeat, root)
                cells.append(f"{seconds:>15.2f}s" if status == 0 else f"{'exit ' + str(status):>16}")
                if root == ROOT and (status or seconds >= TARGET_S):
                    slow.append(f"{module} {flag}")
        print(f"{module:<28} " + " ".join(cells), flush=True)
    print(f"target: every command under {TARGET_S:g} s: " + ("met" if not slow else f"missed by {', '.join(slow)}"))
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
