"""The sizes a compute-optimal forecast chooses from, sized as a study's runs would build them.

A study's flat run config (``template_from_config``, ``template_from_study``: the base config and
overrides its manifest records, never a re-plan of its grid) fixes what a size costs besides its
shape (data, MNG levels, D's size, the penalty); ``describe_size`` prices one shape through
``contract.model_shape.describe_run`` and ``contract.flops`` (what the planner prices runs with);
``family`` is the ladder's family of buildable sizes and ``check_flop_count`` refuses a template
that does not price the ladder's own sizes as its table does. ``python -m analysis.forecast``
calls these. Imports the contract, never ``sweeps`` (data flows one way: plan, runs, table, fit).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.load import AnalysisError
from contract import config as gat_config
from contract.errors import ConfigError
from contract.flops import training_flops_per_image
from contract.model_shape import describe_run
from contract.sizes import MODELS, NetSize, check_size


@dataclass
class Candidate:
    """A buildable size and what one training image costs it."""

    name: str
    width: int
    depth: int
    heads: int
    patch: int
    g_gflops: float
    flops_per_image: float


def template_from_config(config: str | Path) -> dict[str, Any]:
    """A run config (a path or a bundled name) as the flat dict candidates are sized with."""
    return gat_config.flatten(gat_config.to_dict(gat_config.load_config(config)))


def template_from_study(study: str | Path) -> dict[str, Any]:
    """The flat run config of the first run ``study``'s manifest records: the base config its
    grid (the ``grid`` field, the grid file's text) names, with the run's ``overrides``. An
    unreadable manifest, or one without these fields, is an AnalysisError naming what is missing."""
    path = Path(study) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise AnalysisError(f"{path}: not readable ({err}); give --config CONFIG") from err
    if not isinstance(manifest, dict):
        raise AnalysisError(f"{path}: not a manifest (expected a JSON object); give --config CONFIG")
    grid_text, runs = manifest.get("grid"), manifest.get("runs")
    if not isinstance(grid_text, str) or not grid_text.strip():
        raise AnalysisError(f"{path}: no 'grid' field (the grid file's text, naming the base config); "
                            "give --config CONFIG")
    if not isinstance(runs, list) or not runs or not isinstance(runs[0], dict) \
            or not isinstance(runs[0].get("overrides"), dict):
        raise AnalysisError(f"{path}: no 'runs' entry with its 'overrides'; give --config CONFIG")
    try:
        grid = gat_config.load_yaml(grid_text, "its 'grid' field")
        if not isinstance(grid, dict):
            raise ConfigError(f"its 'grid' field is not a mapping of grid sections, got {grid!r}")
        base = _base_config(grid.get("base"), manifest.get("grid_file"))
        return gat_config.to_flat(gat_config.from_dict(gat_config.apply_overrides(base, runs[0]["overrides"])))
    except ConfigError as err:
        raise AnalysisError(f"{path}: the recorded run config does not load: {err}; give --config CONFIG") from err


def _base_config(base: Any, grid_file: Any) -> dict[str, Any]:
    """A recorded grid's ``base:`` (``contract.config.load_base_config``), looked for beside the
    recorded grid file and in this directory; a grid recorded on another machine may name a
    bundled config by a path that is not there, so last the bundled config of that file name."""
    search = [Path(grid_file).parent] if isinstance(grid_file, str) and grid_file else []
    try:
        return gat_config.load_base_config(base, [*search, Path.cwd()])[0]
    except ConfigError:
        moved = gat_config.bundled_config(Path(base).name) if isinstance(base, str) else None
        if moved is None:
            raise
        return gat_config.read_yaml_file(moved) or {}


def describe_size(template: dict[str, Any], width: int, depth: int, heads: int, patch: int) -> Candidate:
    """The size as the template's runs would build it: its name (a registry name where one
    fits), G GFLOPs and training FLOPs per image."""
    size = check_size(NetSize(width, depth, heads, patch))
    flat = {**template, "model.name": None, "model.width": width, "model.depth": depth, "model.heads": heads,
            "model.patch": patch}
    stats = describe_run(gat_config.from_dict(gat_config.unflatten(flat)))
    name = next((key for key, value in MODELS.items() if value == size), f"w{width}-d{depth}-h{heads}-p{patch}")
    fpi = training_flops_per_image(stats["generator_gflops"], stats["discriminator_gflops"],
                                   template.get("loss.penalty", "approx"))
    return Candidate(name, width, depth, heads, patch, float(stats["generator_gflops"]), float(fpi))


def family(table: pd.DataFrame, template: dict[str, Any]) -> list[Candidate]:
    """The sizes the recommendation chooses from: the ladder's head width and patch, its depths
    and twice the deepest, widths from two heads up to 4x the ladder's widest (a 10x budget moves
    N_opt about 3x: width about 1.8x; an optimum on the edge is warned about)."""
    runs = table.drop_duplicates("run_id")
    head = Counter((runs["model.width"] // runs["model.heads"]).astype(int)).most_common(1)[0][0]
    patch = Counter(runs["model.patch"].astype(int)).most_common(1)[0][0]
    depths = sorted(set(runs["model.depth"].astype(int)) | {2 * int(runs["model.depth"].max())})
    widths = range(2 * head, 4 * int(runs["model.width"].max()) + 1, head)
    return [describe_size(template, w, d, w // head, patch) for d in depths for w in widths]


def check_flop_count(candidates: list[Candidate], table: pd.DataFrame) -> None:
    """The candidates' G GFLOPs must match the table's for the ladder's own sizes: otherwise the
    template (data, MNG levels) is not the study's and every recommendation would be off."""
    known = {(c.width, c.depth, c.heads): c.g_gflops for c in candidates}
    for _, row in table.drop_duplicates("run_id").iterrows():
        key = (int(row["model.width"]), int(row["model.depth"]), int(row["model.heads"]))
        if key in known and abs(known[key] / row["g_gflops"] - 1) > 0.01:
            raise AnalysisError(f"run {row['run_id']}: the config sizes it at {known[key]:.4g} G GFLOPs, the table "
                                f"says {row['g_gflops']:.4g}: give --config with the study's run config")
