"""Cost estimates for `--dry-run` and size-keyed resource rules: params, GFLOPs, GPU-hours.

`gat.models.describe` gives per-image forward GFLOPs of G and D; `contract.flops` counts what one
training iteration costs from them (the same count the analysis table uses). GPU-hours divide
the run's FLOPs by an assumed sustained throughput (`resources.estimate`), so they are a
planning figure, not a promise.
"""
from __future__ import annotations

import json
from typing import Any

from contract import config as gat_config
from contract.flops import training_flops_per_image
from sweeps.resources import Estimate

# Latent shape (channels, size) and classes per data.kind: the Fashion-MNIST tiny VAE maps
# 32x32 to 4x8x8; the ImageNet-256 layouts use the SD-VAE's 4x32x32.
DATA_SHAPES = {"fashion_mnist": (4, 8, 10), "latents": (4, 32, 1000), "repa": (4, 32, 1000)}
_MODEL_KEYS = ("model.", "mng.", "repa.", "data.kind")
_cache: dict[str, dict[str, Any] | None] = {}


def model_stats(flat: dict[str, Any]) -> dict[str, Any] | None:
    """`gat.models.describe` for a run's flat config (cached per model shape), plus
    `params` = G + D parameters and `gflops` = G + D forward GFLOPs. None when the model package
    cannot be imported; a config the models reject raises `contract.config.ConfigError`."""
    key = json.dumps({k: v for k, v in flat.items() if k.startswith(_MODEL_KEYS)}, sort_keys=True, default=str)
    if key not in _cache:
        _cache[key] = _describe(flat)
    return _cache[key]


def _describe(flat: dict[str, Any]) -> dict[str, Any] | None:
    try:
        from gat.models import describe
    except ImportError:
        return None
    channels, size, classes = DATA_SHAPES.get(flat.get("data.kind"), (4, 32, 1000))
    cfg = gat_config.from_dict(gat_config.unflatten(flat))
    repa_dim = 768 if cfg.repa.encoder != "none" else None
    info = dict(describe(cfg, latent_channels=channels, latent_size=size, num_classes=classes, repa_dim=repa_dim))
    info["params"] = info["generator_params"] + info["discriminator_params"]
    info["gflops"] = info["generator_gflops"] + info["discriminator_gflops"]
    return info


def training_flops(flat: dict[str, Any], stats: dict[str, Any] | None) -> float | None:
    """Estimated FLOPs of the whole run (`contract.flops`' count per image, times batch × steps)."""
    if stats is None:
        return None
    per_image = training_flops_per_image(
        stats["generator_gflops"], stats["discriminator_gflops"], flat.get("loss.penalty", "approx")
    )
    return per_image * flat["train.batch"] * flat["train.steps"]


def device_hours(flops: float | None, estimate: Estimate) -> float | None:
    """Device-hours at the assumed sustained throughput (independent of how many devices)."""
    if flops is None:
        return None
    return flops / (estimate.device_tflops * 1e12 * estimate.mfu) / 3600
