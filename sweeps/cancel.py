"""`python -m sweeps.cancel SWEEP_DIR [--only REGEX]`: cancel a sweep's queued and running jobs.

Jobs come from the manifest. A cancelled run keeps `running` in its status.json with no lease,
which reads as `interrupted`; the next launch resumes it from its checkpoint. On the local
executor one worker serves several runs, so cancelling one of its runs stops the whole worker.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sweeps import executors, manifest
from sweeps.spec import GridError, only_pattern


def cancel_sweep(sweep_dir: Path, only: str | None = None) -> list[str]:
    """Cancel the jobs of the runs matching `only` (all when None); returns the cancelled ids."""
    data = manifest.read(sweep_dir)
    if data is None:
        raise FileNotFoundError(f"{sweep_dir} has no {manifest.MANIFEST}")
    pattern = only_pattern(only)
    chosen = {r["run_id"] for r in data.get("runs", [])
              if not pattern or pattern.search(r["name"]) or pattern.search(r["run_id"])}
    by_kind: dict[str, list[str]] = {}
    for job in data.get("jobs", []):
        if chosen & set(job["run_ids"]):
            by_kind.setdefault(job.get("executor", "slurm"), []).append(job["job_id"])
    cancelled = []
    for kind, ids in by_kind.items():
        cancelled += executors.cancel(kind, ids)
    return cancelled


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m sweeps.cancel", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--only", metavar="REGEX", help="only runs whose name or id matches")
    args = p.parse_args(argv)
    try:
        cancelled = cancel_sweep(args.sweep_dir, args.only)
    except (FileNotFoundError, GridError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"cancelled {len(cancelled)} job(s)" + (f": {', '.join(cancelled)}" if cancelled else " (none active)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
