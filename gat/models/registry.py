"""Builders of a run's G and D from its config, and `describe` (what model.json holds).

A size is either a registry name, "GAT-XL/2" (depth 28, width 1152, 16 heads, patch 2), or an
explicit string "w384-d12-h6-p2". G and D share the patch; D may have its own width, depth and
heads (`model.d_*`, defaulting to G's).

The sizes and `describe` (parameter counts and GFLOPs, counted analytically) live in
`contract.sizes` and `contract.model_shape`, torch-free, so the sweeps and the analysis size a
run without building it; import them from there (this module uses the sizes only to build).
"""
from __future__ import annotations

from contract.config import RunConfig
from contract.mng import num_inputs
from contract.model_shape import discriminator_size, generator_size
from gat.models.discriminator import Discriminator
from gat.models.generator import Generator

__all__ = ["build_discriminator", "build_generator"]


def build_generator(cfg: RunConfig, *, latent_channels: int, latent_size: int, num_classes: int) -> Generator:
    """G for this run; it has `mng.levels` output heads even when MNG is off."""
    size = generator_size(cfg.model)
    return Generator(
        width=size.width,
        depth=size.depth,
        heads=size.heads,
        patch=size.patch,
        num_levels=cfg.mng.levels,
        latent_channels=latent_channels,
        latent_size=latent_size,
        num_classes=num_classes,
        z_dim=cfg.model.z_dim,
        w_avg_beta=cfg.train.w_avg_beta,
        grad_checkpointing=cfg.model.grad_checkpointing,
    )


def build_discriminator(
    cfg: RunConfig, *, latent_channels: int, latent_size: int, num_classes: int, repa_dim: int | None
) -> Discriminator:
    """D for this run, seeing `num_inputs(cfg.mng)` levels; a REPA projector iff `repa_dim`."""
    size = discriminator_size(cfg.model)
    return Discriminator(
        width=size.width,
        depth=size.depth,
        heads=size.heads,
        patch=size.patch,
        in_channels=latent_channels * num_inputs(cfg.mng),
        latent_size=latent_size,
        num_classes=num_classes,
        repa_dim=repa_dim,
        cmap_dim=cfg.model.d_cmap_dim,
        projector_hidden=cfg.repa.projector_hidden,
        grad_checkpointing=cfg.model.grad_checkpointing,
    )
