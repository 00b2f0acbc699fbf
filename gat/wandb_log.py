"""The W&B mirror of a run's stats.jsonl (docs/wandb.md), written by rank 0.

Every stats line becomes the W&B history row of its step; at an eval tick the row also holds the
sample grids as images. W&B must never take a run down or hold it up: `logging.wandb: offline`
(the default) needs no network, and any W&B failure only disables the mirror, with a warning.

Resume. A resumed run redoes the steps after its checkpoint and stats.jsonl drops their old
lines, but W&B ignores a row whose step is below one it has already seen: continuing the same
W&B run would keep the old rows and lose the redone ones. So a run folder that already has a W&B
run (RUN_DIR/wandb_id) gets, online with an SDK that has it, that run rewound to the checkpoint's
step (`resume_from`, done by the W&B server); otherwise (offline, or the server refuses) a new
W&B run, in the same group, whose config `resumed_from` = {run_id, step} names the run and step
it continues. RUN_DIR/wandb_id then holds the new run's id.
"""
from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path
from typing import Any

from contract import rundir
from contract.cli import say
from contract.config import RunConfig, to_dict

RESUMED_FROM = "resumed_from"  # W&B config key linking a resumed attempt's run to the one it continues


def can_rewind(mode: str) -> bool:
    """Whether W&B can rewind a run here: the server does it (so online only), and the SDK must
    know `resume_from` (wandb >= 0.17.1)."""
    import wandb

    return mode == "online" and "resume_from" in wandb.Settings.model_fields


def run_config(config: RunConfig) -> dict[str, Any]:
    """The W&B run config: the resolved run config, plus the grid coordinates as `grid` so runs
    can be filtered and grouped by axis in the W&B UI."""
    return {**to_dict(config), "grid": dict(config.logging.grid_point)}


def history_row(record: dict[str, Any]) -> dict[str, Any]:
    """A stats line as W&B history: numbers by name, `metrics/<name>`, `diagnostics/<name>` (a
    per-block list as `diagnostics/<name>/<block>`); `step` is the row's step, not a value."""
    row = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
    row.update({f"metrics/{k}": v for k, v in record.get("metrics", {}).items()})
    for key, value in record.get("diagnostics", {}).items():
        if isinstance(value, list):
            row.update({f"diagnostics/{key}/{i}": v for i, v in enumerate(value)})
        else:
            row[f"diagnostics/{key}"] = value
    return row


class WandbLog:
    """The W&B run of one attempt at a run folder; without W&B (`off`, or after a failure) every
    method is a no-op."""

    def __init__(self, config: RunConfig, run_dir: Path, step: int):
        """Start the attempt's W&B run; `step` is the step it starts from (its checkpoint's)."""
        self.run = None
        self.sync_dir: Path | None = None  # set for an offline run: what `wandb sync` uploads
        if config.logging.wandb == "off":
            return
        try:
            self.run = _start(config, run_dir, step)
            rundir.write_text_atomic(run_dir / rundir.WANDB_ID, self.run.id + "\n")
            if self.run.offline:
                self.sync_dir = Path(self.run.settings.wandb_dir).resolve()
        except Exception as err:  # W&B must never take a run down
            say(f"warning: W&B disabled ({type(err).__name__}: {err})", file=sys.stderr)
            self.finish(exit_code=1)

    def log(self, record: dict[str, Any], samples: dict[float, Path] | None = None) -> None:
        """Log one stats line at its step, with the eval tick's sample grids ({psi: PNG})."""
        if self.run is None:
            return
        try:
            import wandb

            row = history_row(record)
            for psi, path in (samples or {}).items():
                key = "samples/untruncated" if psi == 0 else "samples/truncated"
                row[key] = wandb.Image(str(path), caption=f"step {record['step']}, psi={psi:g}")
            self.run.log(row, step=record["step"])
        except Exception as err:
            say(f"warning: W&B log failed ({type(err).__name__}: {err})", file=sys.stderr)

    def finish(self, exit_code: int = 0) -> None:
        """Close the W&B run; an offline one then prints the command that uploads it."""
        run, self.run = self.run, None
        if run is None:
            return
        with contextlib.suppress(Exception):
            run.finish(exit_code=exit_code)
        if self.sync_dir is not None:
            # The folder holds every attempt's offline run; `wandb sync` skips those already synced.
            say(f"W&B run saved offline; upload it with: wandb sync {shlex.quote(str(self.sync_dir))}")


def _start(config: RunConfig, run_dir: Path, step: int):
    """`wandb.init` for this attempt: a new run, the folder's W&B run rewound to `step`, or a new
    run linked to it (see the module docstring)."""
    import wandb

    log = config.logging
    kwargs: dict[str, Any] = dict(
        project=log.wandb_project, entity=log.wandb_entity, group=log.wandb_group, tags=log.wandb_tags or None,
        job_type=log.wandb_job_type, name=run_dir.name, dir=str(run_dir), mode=log.wandb,
        config=run_config(config), settings=wandb.Settings(init_timeout=60, silent=True),
    )
    id_file = run_dir / rundir.WANDB_ID
    previous = id_file.read_text().strip() if id_file.is_file() else ""
    if not previous:
        return wandb.init(**kwargs)
    if can_rewind(log.wandb):
        try:
            return wandb.init(resume_from=f"{previous}?_step={step}", **kwargs)
        except Exception as err:  # rewind is a preview feature, and an offline run never synced is unknown
            say(f"warning: W&B could not rewind run {previous} to step {step} ({type(err).__name__}: {err}); "
                "starting a new W&B run linked to it", file=sys.stderr)
    kwargs["config"][RESUMED_FROM] = {"run_id": previous, "step": step}
    return wandb.init(**kwargs)
