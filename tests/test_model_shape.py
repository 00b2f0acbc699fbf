"""contract.model_shape counts what the networks hold without building them: its parameter
counts equal torch's count of the real G and D (built on the meta device) over the registry and
custom sizes, and its model.json numbers equal those real trainer runs wrote into the committed
study tables."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from contract.config import from_dict
from contract.errors import ConfigError
from contract.model_shape import describe
from contract.sizes import MODELS
from gat.models.registry import build_discriminator, build_generator
from contract.model_shape import DATA_SHAPES
from sweeps.costs import model_stats
from sweeps.plan import make_plan
from sweeps.spec import load_grid

ROOT = Path(__file__).resolve().parent.parent

# Config sections beyond a registry name: custom widths/depths/heads/patches, every MNG mode and
# several level counts (levels = depth included), D's own width/depth/heads and cmap width, a
# small z and REPA projector.
CUSTOM: dict[str, dict[str, Any]] = {
    "w32-d4-h2-p2": {"model": {"width": 32, "depth": 4, "heads": 2, "patch": 2}},
    "w64-d4-h4-p4 D w96-d3-h6 cmap64 mng-off-2": {
        "model": {"width": 64, "depth": 4, "heads": 4, "patch": 4, "d_width": 96, "d_depth": 3, "d_heads": 6,
                  "d_cmap_dim": 64},
        "mng": {"mode": "off", "levels": 2},
    },
    "w32-d6-h2-p1 z16 hidden128 mng-msg-3": {
        "model": {"width": 32, "depth": 6, "heads": 2, "patch": 1, "z_dim": 16},
        "mng": {"mode": "msg", "levels": 3},
        "repa": {"projector_hidden": 128},
    },
    "w48-d5-h3-p2 mng-lin-5": {
        "model": {"width": 48, "depth": 5, "heads": 3, "patch": 2},
        "mng": {"mode": "lin", "levels": 5, "i_min": 0.2, "offset": 0.0},
    },
    "w80-d7-h5-p8 mng-exp-7": {"model": {"width": 80, "depth": 7, "heads": 5, "patch": 8}, "mng": {"levels": 7}},
    "w128-d2-h8-p2 mng-exp-2 D-width-only": {
        "model": {"width": 128, "depth": 2, "heads": 8, "patch": 2, "d_width": 256}, "mng": {"levels": 2},
    },
    "w16-d4-h2-p2 D-depth-only cmap32 mng-off-1": {
        "model": {"width": 16, "depth": 4, "heads": 2, "patch": 2, "d_depth": 9, "d_cmap_dim": 32},
        "mng": {"mode": "off", "levels": 1},
    },
    "GAT-B/4 D-heads-only": {"model": {"name": "GAT-B/4", "d_heads": 6}},
    "GAT-S/2 D w768-h12 mng-msg-4": {"model": {"name": "GAT-S/2", "d_width": 768, "d_heads": 12},
                                     "mng": {"mode": "msg"}},
}
CONFIGS = {**{name: {"model": {"name": name}} for name in MODELS}, **CUSTOM}
# Both data kinds' latent shapes (channels, size, classes), and one odd shape besides.
SHAPES = {**{kind: DATA_SHAPES[kind] for kind in ("fashion_mnist", "latents")}, "3x16x7": (3, 16, 7)}
REPA_DIMS = (None, 768, 384)


def torch_counts(config: dict[str, Any], channels: int, size: int, classes: int, repa_dim: int | None) -> tuple:
    """(G, D without its projector, the projector) as `sum(p.numel())` of the built networks."""
    cfg = from_dict(config)
    with torch.device("meta"):  # shapes only: XL costs no memory
        G = build_generator(cfg, latent_channels=channels, latent_size=size, num_classes=classes)
        D = build_discriminator(cfg, latent_channels=channels, latent_size=size, num_classes=classes,
                                repa_dim=repa_dim)
    projector = sum(p.numel() for p in D.projector.parameters()) if D.projector is not None else 0
    return sum(p.numel() for p in G.parameters()), sum(p.numel() for p in D.parameters()) - projector, projector


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_analytic_parameter_counts_equal_torch(name: str, shape: str) -> None:
    channels, size, classes = SHAPES[shape]
    for repa_dim in REPA_DIMS:
        info = describe(from_dict(CONFIGS[name]), latent_channels=channels, latent_size=size, num_classes=classes,
                        repa_dim=repa_dim)
        analytic = (info["generator_params"], info["discriminator_params"], info["discriminator_projector_params"])
        assert analytic == torch_counts(CONFIGS[name], channels, size, classes, repa_dim), f"repa_dim={repa_dim}"


def test_a_latent_the_patch_does_not_tile_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"latent size 8 is not divisible by model\.patch=16"):
        describe(from_dict({"model": {"width": 32, "depth": 4, "heads": 2, "patch": 16}}), latent_size=8)


def _committed_tables() -> list[Path]:
    return sorted(ROOT.glob("results/*/analysis/**/results.csv"))


def _study_of(table: Path) -> Path:
    return next(parent for parent in table.parents if (parent / "manifest.json").is_file())


@pytest.mark.parametrize("table", _committed_tables(), ids=lambda p: str(p.relative_to(ROOT / "results")))
def test_committed_model_json_numbers_are_reproduced(table: Path) -> None:
    """Each committed row's g/d params and GFLOPs came from the model.json its trainer run wrote
    (before the count moved into the contract); the planner's count of that run must equal them."""
    study = _study_of(table)
    grid = json.loads((study / "manifest.json").read_text())["grid_file"]
    planned = {run.run_id: run.flat for run in make_plan(load_grid(ROOT / grid), study).runs}
    rows = pd.read_csv(table).drop_duplicates("run_id")
    assert len(rows) and set(rows["run_id"]) <= planned.keys()
    # A point the grid plans but never launched (the stability map's seed 1 off its brackets) is
    # listed as pending, with no model.json behind it: nothing to compare.
    never_ran = rows["status"].eq("pending") & rows["g_params"].isna()
    assert rows.loc[~never_ran, ["g_params", "d_params", "g_gflops", "d_gflops"]].notna().all(axis=None)
    for row in rows[~never_ran].itertuples():
        stats = model_stats(planned[row.run_id])
        got = (stats["generator_params"], stats["discriminator_params"], stats["generator_gflops"],
               stats["discriminator_gflops"])
        assert got == (row.g_params, row.d_params, row.g_gflops, row.d_gflops), row.run_id
