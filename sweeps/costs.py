"""Cost estimates for `--dry-run` and size-keyed resource rules: params, GFLOPs, GPU-hours.

`contract.model_shape.describe` gives per-image forward GFLOPs of G and D (counted analytically,
no torch); `contract.flops` counts what one training iteration costs from them (the same count
the analysis table uses). GPU-hours divide the run's FLOPs by an assumed sustained throughput
(`resources.estimate`), so they are a planning figure, not a promise.
"""
from __future__ import annotations

import json
from typing import Any

from contract import config as gat_config
from contract.flops import training_flops_per_image
from contract.model_shape import describe_run
from sweeps.resources import Estimate

# What `describe` reads: the model, its MNG and REPA, the data's shape and the LR rules' base.
_MODEL_KEYS = ("model.", "mng.", "repa.", "data.kind", "train.base_lr", "train.base_width")
_cache: dict[str, dict[str, Any]] = {}


def model_stats(flat: dict[str, Any]) -> dict[str, Any]:
    """`contract.model_shape.describe` for a run's flat config (cached per model shape), plus
    `params` = G + D parameters and `gflops` = G + D forward GFLOPs. A config the models reject
    raises `contract.config.ConfigError`."""
    key = json.dumps({k: v for k, v in flat.items() if k.startswith(_MODEL_KEYS)}, sort_keys=True, default=str)
    if key not in _cache:
        _cache[key] = _describe(flat)
    return _cache[key]


def _describe(flat: dict[str, Any]) -> dict[str, Any]:
    info = describe_run(gat_config.from_dict(gat_config.unflatten(flat)))
    info["params"] = info["generator_params"] + info["discriminator_params"]
    info["gflops"] = info["generator_gflops"] + info["discriminator_gflops"]
    return info


def training_flops(flat: dict[str, Any], stats: dict[str, Any]) -> float:
    """Estimated FLOPs of the whole run (`contract.flops`' count per image, times batch × steps)."""
    per_image = training_flops_per_image(
        stats["generator_gflops"], stats["discriminator_gflops"], flat.get("loss.penalty", "approx")
    )
    return per_image * flat["train.batch"] * flat["train.steps"]


def device_hours(flops: float, estimate: Estimate) -> float:
    """Device-hours at the assumed sustained throughput (independent of how many devices)."""
    return flops / (estimate.device_tflops * 1e12 * estimate.mfu) / 3600
