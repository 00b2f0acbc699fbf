"""Run identity and state: which run folder a grid point maps to, and where that run stands.

Run ID = the first 8 hex digits of SHA-1 over the effective config, which `effective_flat` derives
through `contract.config.from_dict`, as the trainer does (defaults filled, every value coerced to its
field's type, so `steps: 60`, `60.0` and `6e1` are one run, `model.name` resolved to its sizes), with
the keys in `COSMETIC` left out: they change how a run is logged or how often it checkpoints, never
its numbers. So editing `logging.wandb` or `data.num_workers` in a grid maps onto the same run
folders, while anything that changes the result (`eval.*` included, since it decides which
metrics exist) makes a new run. The folder name is descriptive plus the ID:
`w384-d12-p2-lr_width_aware-mng_exp-s0-1a2b3c4d`.

`RunNamer` gives points their ids, names and folders, for a grid's plan and for a search's trials
(`sweeps.tune`) alike. `PlanStream` walks the plan one run at a time, holding per run only its id
and a digest (about 200 bytes), so a 10^6-point `--dry-run` need not hold 10^6 configs (about 3 KB
each); `make_plan` lists the same walk.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from contract import config as gat_config
from contract import rundir
from contract.config import to_flat, unflatten
from contract.errors import UserError
from sweeps import lease as leases
from sweeps import manifest
from sweeps.spec import GridError, GridSpec, Point, grid_points, run_config

COSMETIC = gat_config.COSMETIC_KEYS
ID_LENGTH = 8
COLLISION_ID_LENGTH = 16
LABELS = {
    "model.width": "w", "model.depth": "d", "model.heads": "h", "model.patch": "p",
    "model.d_width": "dw", "model.d_depth": "dd", "model.d_heads": "dh", "model.name": "",
    "train.lr_rule": "lr_", "train.base_lr": "blr", "train.batch": "b", "train.steps": "it",
    "mng.mode": "mng_", "mng.levels": "k", "loss.penalty": "pen_", "repa.encoder": "repa_", "seed": "s",
}
ALWAYS = ("model.width", "model.depth", "model.patch")
Dropped = list[tuple[float, dict[str, Any], str]]  # (budget, coords, why) of the cells a budget grid leaves out


@dataclass
class PlannedRun:
    """One point of the plan: identity, where it lives, and what it overrides. `group` is the
    grid's name, the W&B group of its runs unless the grid sets `logging.wandb_group`."""

    run_id: str
    name: str
    coords: dict[str, Any]
    overrides: dict[str, Any]
    flat: dict[str, Any]
    dir: Path
    group: str
    budget: float | None = None  # the isoFLOP budget it was solved for (None: a grid without budgets)
    digest: bytes | None = None  # its `identity_digest` (None: computed from `flat` when asked)

    def wandb_context(self) -> dict[str, Any]:
        """The cosmetic logging keys the sweep adds to the run's config (see `wandb_context`)."""
        return wandb_context(self.flat, self.group, self.coords)

    def config(self) -> dict[str, Any]:
        """The run's trainer config as nested data (what the job hands to `gat.train`)."""
        return unflatten({**self.flat, **self.wandb_context()})

    def manifest_entry(self) -> dict[str, Any]:
        """The run as the manifest records it (`manifest.merge_runs`), with its identity digest (hex),
        so that a later `RunNamer` knows which config holds the id without reading any run folder."""
        digest = self.digest or identity_digest(self.flat)
        return {"run_id": self.run_id, "name": self.name, "dir": f"runs/{self.name}", "coords": self.coords,
                "overrides": self.overrides, manifest.IDENTITY: digest.hex()}


@dataclass
class Plan:
    """The expanded grid bound to a sweep folder."""

    spec: GridSpec
    sweep_dir: Path
    runs: list[PlannedRun]
    merged: int = 0  # points whose effective config duplicated an earlier point
    dropped: Dropped = dataclasses.field(default_factory=list)


@dataclass
class RunStatus:
    """Where one run stands, read from its folder (status.json, lease, sweep events)."""

    state: str
    step: int | None = None
    reason: str | None = None
    updated: str | None = None
    holder: dict[str, Any] | None = None
    checkpoint_step: int | None = None  # the last durable step: where a resume starts


@lru_cache(maxsize=1)
def default_flat() -> dict[str, Any]:
    """The trainer's default config, flat (computed once; callers must not change it)."""
    return to_flat(gat_config.RunConfig())


def effective_flat(spec: GridSpec, point: Point) -> dict[str, Any]:
    """A point's effective config, flat: the grid's base plus the point's overrides through
    `contract.config.from_dict` (`sweeps.spec.run_config`), so the plan hashes the very config the
    trainer will run. An invalid point is a GridError naming its axes."""
    return to_flat(run_config(spec, point))


def wandb_context(flat: dict[str, Any], group: str, coords: dict[str, Any]) -> dict[str, Any]:
    """The cosmetic logging keys a sweep or search adds to a run's config: its W&B group (the
    grid's name unless the grid sets one) and its coordinates. They stay out of `flat`, the
    point's config as the grid states it (what the run id hashes)."""
    return {"logging.wandb_group": flat.get("logging.wandb_group") or group, "logging.grid_point": dict(coords)}


def run_identity(flat: dict[str, Any]) -> str:
    """What makes two runs the same run: the JSON list of the sorted non-cosmetic [key, value] pairs."""
    defaults = default_flat()
    keys = {k for k in flat.keys() - COSMETIC if k not in gat_config.IDENTITY_IF_SET or flat[k] != defaults[k]}
    return json.dumps([[k, flat[k]] for k in sorted(keys)], separators=(",", ":"), default=str)


def identity_digest(flat: dict[str, Any]) -> bytes:
    """SHA-1 of the run's identity: what its id is cut from."""
    return hashlib.sha1(run_identity(flat).encode()).digest()


def run_id(flat: dict[str, Any], length: int | None = None) -> str:
    """The short hash naming a run: the first `length` (default ID_LENGTH) hex digits of SHA-1
    of its identity."""
    return identity_digest(flat).hex()[: length or ID_LENGTH]


def run_name(flat: dict[str, Any], axes: list[str], rid: str) -> str:
    """Descriptive folder name: model size, then the grid's other axes, then the run ID."""
    parts = []
    for key in list(ALWAYS) + [a for a in axes if a not in ALWAYS]:
        if key == "model.name" or flat.get(key) is None:
            continue
        label = LABELS.get(key, key.rsplit(".", 1)[-1] + "_")
        parts.append(label + _format(flat[key]))
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts))[:80]
    return f"{text}-{rid}" if text else rid


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def existing_folders(sweep_dir: Path, recorded: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """Run id -> name of the folder under `runs/` that already holds it: the one the manifest
    records (`recorded`: its run entries, read here when not given), else one whose name ends in
    the id. Editing a grid can change a run's descriptive name (moving `seed` from `set:` into the
    axes adds `-s0-`), never its id."""
    runs_dir = Path(sweep_dir) / "runs"
    try:
        present = sorted(entry.name for entry in os.scandir(runs_dir) if entry.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    found: dict[str, str] = {}
    for name in present:
        found.setdefault(name.rsplit("-", 1)[-1], name)
    if recorded is None:
        recorded = (manifest.read(sweep_dir) or {}).get("runs", [])
    found.update({r["run_id"]: Path(r["dir"]).name for r in recorded
                  if manifest.run_dir(sweep_dir, r, must_exist=True) is not None})
    return found


def _digest_for(rid: str, digest: bytes | None) -> bytes | None:
    """`digest` when the id `rid` is cut from it (what a recorded run's digest must satisfy), else None."""
    return digest if digest is not None and digest.hex().startswith(rid) else None


class RunNamer:
    """Gives points their run id, name and folder: a grid's plan (`PlanStream`) and a search's
    trials (`sweeps.tune`) name their runs through one of these.

    The id is `ID_LENGTH` hex digits of the point's `identity_digest`, or `COLLISION_ID_LENGTH`
    when those already name a different config: among the runs this namer has placed, or the runs
    the sweep folder already holds (its manifest's entries, whatever grid or version of one made
    them, and run folders it does not record). Two configs are never merged into one folder. A
    point whose config it has placed before is a duplicate. A run that already has a folder under
    another name keeps it (see `existing_folders`). It holds each distinct run's id and digest,
    never its config.

    A recorded run's digest is the one its manifest entry records (`manifest.IDENTITY`). An entry
    written before digests were recorded, or a folder no entry names, is looked at only when a
    point's id is its id, in this order: the point's own digest when the entry records the
    point's overrides; the digest of the entry's overrides under this grid; that of the folder's
    config (`contract.config.load_run_config`). A digest counts only when the id is cut from it
    (a config the grid's base no longer yields is not taken for the run's); with none, the id is
    left to the point, as before digests were recorded.
    """

    def __init__(self, spec: GridSpec, sweep_dir: Path, axes: list[str]) -> None:
        """`axes`: the keys folder names spell after the model size (`run_name`)."""
        self.spec, self.axes = spec, list(axes)
        self.runs_dir = Path(sweep_dir) / "runs"
        recorded = (manifest.read(Path(sweep_dir)) or {}).get("runs", [])
        self.folders = existing_folders(Path(sweep_dir), recorded)
        self.placed: dict[str, bytes] = {}  # run id -> SHA-1 of its identity, for the runs placed here
        self.recorded: dict[str, bytes] = {}  # the same for runs the sweep folder holds, as far as known
        self.unchecked: dict[str, dict[str, Any] | None] = {}  # recorded ids of unknown digest: entry (None: a folder)
        for entry in recorded:
            rid = str(entry.get("run_id", ""))
            digest = _digest_for(rid, _from_hex(entry.get(manifest.IDENTITY)))
            if digest is not None:
                self.recorded[rid] = digest
            else:
                self.unchecked[rid] = entry
        for rid in self.folders.keys() - self.recorded.keys() - self.unchecked.keys():
            self.unchecked[rid] = None

    def place(self, point: Point, budget: float | None = None) -> tuple[PlannedRun, bool]:
        """The point's run and whether it is new; a duplicate's run has the earlier run's id
        (its name is this point's own, which differs only where the two differ in cosmetic keys)."""
        flat = effective_flat(self.spec, point)
        digest = identity_digest(flat)
        rid = digest.hex()[:ID_LENGTH]
        holder = self.placed.get(rid) or self.recorded.get(rid) or self._check(rid, point, digest)
        if holder is not None and holder != digest:
            rid = digest.hex()[:COLLISION_ID_LENGTH]
        new = rid not in self.placed
        self.placed[rid] = digest
        name = run_name(flat, self.axes + (["train.steps"] if budget else []), rid)
        if self.folders.get(rid, name) != name and not (self.runs_dir / name).is_dir():
            name = self.folders[rid]
        return PlannedRun(rid, name, point.coords, point.overrides, flat, self.runs_dir / name, self.spec.name,
                          budget, digest), new

    def _check(self, rid: str, point: Point, digest: bytes) -> bytes | None:
        """The digest of the recorded run of unknown digest that holds `rid`, if any and if it can
        be told (see the class docstring); looked up once per id."""
        if rid not in self.unchecked:
            return None
        entry = self.unchecked.pop(rid)
        found = None
        if entry is not None:
            overrides = entry.get("overrides")
            if overrides == point.overrides:
                found = digest
            elif isinstance(overrides, dict):
                try:
                    found = _digest_for(rid, identity_digest(effective_flat(
                        self.spec, Point(dict(entry.get("coords") or {}), overrides))))
                except GridError:
                    pass
        if found is None and rid in self.folders:
            try:
                found = _digest_for(rid, identity_digest(to_flat(
                    gat_config.load_run_config(self.runs_dir / self.folders[rid]))))
            except (UserError, OSError):
                pass  # no config.yaml yet (the job never started the trainer), or one unreadable
        if found is not None:
            self.recorded[rid] = found
        return found


@dataclass
class PlanStream:
    """The plan walked one run at a time, in plan order, without holding the runs: what
    `make_plan` lists, for a caller that only needs to look at each run once (`--dry-run`).

    Each walk expands the grid afresh and recounts `merged` and `dropped`, which are complete
    once it ends. A walk holds each distinct run's id and identity digest (to merge duplicates
    and tell an id collision from one), never its config.
    """

    spec: GridSpec
    sweep_dir: Path
    merged: int = 0  # points whose effective config duplicated an earlier point
    dropped: Dropped = dataclasses.field(default_factory=list)

    def __iter__(self) -> Iterator[PlannedRun]:
        """Points with the same effective config (e.g. an axis over a cosmetic key) are one run,
        named by a `RunNamer`."""
        self.merged, self.dropped = 0, []
        namer = RunNamer(self.spec, self.sweep_dir, self.spec.axes)
        for point, budget in budget_points(self.spec, self.dropped):
            run, new = namer.place(point, budget)
            if new:
                yield run
            else:
                self.merged += 1


def _from_hex(text: Any) -> bytes | None:
    """A digest recorded as hex text, or None when it is absent or not hex."""
    try:
        return bytes.fromhex(text) if isinstance(text, str) else None
    except ValueError:
        return None


def make_plan(spec: GridSpec, sweep_dir: Path) -> Plan:
    """Expand the grid and give every point its ID, name and run folder (`PlanStream`, listed)."""
    stream = PlanStream(spec, Path(sweep_dir))
    runs = list(stream)
    return Plan(spec=spec, sweep_dir=Path(sweep_dir), runs=runs, merged=stream.merged, dropped=stream.dropped)


def budget_points(spec: GridSpec, dropped: Dropped | None = None) -> Iterator[tuple[Point, float | None]]:
    """The grid's points, each with its budget: as expanded without `budgets:`, else one point per
    (budget, point) with `train.steps` solved to the budget and `eval.every` following it. Cells
    the grid's limits cannot meet go to `dropped` with the reason."""
    if spec.budgets is None:
        yield from ((point, None) for point in grid_points(spec))
        return
    from sweeps import costs  # the model package loads only for isoFLOP grids

    b = spec.budgets
    dropped = [] if dropped is None else dropped
    found = False
    for budget in b.flops:
        for point in grid_points(spec):
            flat = effective_flat(spec, point)
            per_step = costs.training_flops({**flat, "train.steps": 1}, costs.model_stats(flat))
            steps = max(1, round(budget / per_step))
            miss = steps * per_step / budget - 1
            reason = (f"needs {steps} steps < budgets.min_steps={b.min_steps}" if steps < b.min_steps
                      else f"needs {steps} steps > budgets.max_steps={b.max_steps}" if steps > b.max_steps
                      else f"nearest step count misses the budget by {miss:+.1%} (tolerance {b.tolerance:g})"
                      if abs(miss) > b.tolerance else None)
            if reason:
                dropped.append((budget, point.coords, reason))
                continue
            found = True
            solved = {"train.steps": steps, "eval.every": -(-steps // b.eval_count)}
            yield Point(point.coords, {**point.overrides, **solved}), budget
    if not found:
        raise GridError("budgets: every (budget, size) cell was dropped: " + dropped[0][2])


def run_status(run_dir: Path, stale_s: float, now: float | None = None) -> RunStatus:
    """A run's derived state from its folder; a missing folder is `pending`."""
    status = rundir.read_status(run_dir)
    holder = leases.holder(run_dir / rundir.SWEEP_SUBDIR / leases.LEASE_FILE, stale_s, now)
    if status is None:
        return RunStatus("running" if holder else "pending", holder=holder)
    state = status.get("state")
    if state == "running":
        state = "running" if holder else "interrupted"
    elif state == "failed" and holder:
        state = "running"  # a job holds it: retrying, or rerunning with --rerun-failed
    elif state not in rundir.SWEEP_STATES:
        state = "failed"
    return RunStatus(state, status.get("step"), status.get("reason"), status.get("updated"), holder,
                     status.get("checkpoint_step"))


def status_reader(sweep_dir: Path, stale_s: float) -> Callable[[PlannedRun], RunStatus]:
    """A function giving a planned run's status. `runs/` is listed once, here, so a run without a
    folder costs nothing (it is `pending`) and a 10^6-point plan reads only the folders there are."""
    try:
        existing = {entry.name for entry in os.scandir(Path(sweep_dir) / "runs") if entry.is_dir()}
    except FileNotFoundError:
        existing = set()
    now = time.time()
    return lambda run: run_status(run.dir, stale_s, now) if run.name in existing else RunStatus("pending")
