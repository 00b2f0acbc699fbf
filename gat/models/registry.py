"""Model sizes by name (DiT style), builders, and `describe` (what model.json holds).

A size is either a registry name, "GAT-XL/2" (depth 28, width 1152, 16 heads, patch 2), or an
explicit string "w384-d12-h6-p2". G and D share the patch; D may have its own width, depth and
heads (`model.d_*`, defaulting to G's).
"""
from __future__ import annotations

import torch

from contract.config import ModelConfig, RunConfig
from gat.lr_rules import RULES, learning_rate
from gat.mng import noise_levels, num_inputs
from gat.models.discriminator import CMAP_DIM, Discriminator
from gat.models.generator import Generator
from gat.models.layers import swiglu_hidden
from contract.sizes import NetSize, check_size, parse_size


def generator_size(cfg: ModelConfig) -> NetSize:
    """G's size: from `name` when set, else from width/depth/heads/patch."""
    if cfg.name is not None:
        return parse_size(cfg.name)
    return check_size(NetSize(cfg.width, cfg.depth, cfg.heads, cfg.patch))


def discriminator_size(cfg: ModelConfig) -> NetSize:
    """D's size: the d_* fields, each falling back to G's; always G's patch."""
    g = generator_size(cfg)
    size = NetSize(cfg.d_width or g.width, cfg.d_depth or g.depth, cfg.d_heads or g.heads, g.patch)
    return check_size(size, prefix="model.d_")


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


# GFLOPs follow DiT's convention: multiply-adds (x1e9) of one forward pass for one sample. Only
# work on tokens is counted (every linear applied to token activations, and the attention
# matmuls), so the cost scales with the token count; the per-sample MLPs on w and on class
# embeddings (mapping, modulation, D's class-embedding MLP) are left out, as in the paper's
# figures (GAT-XL/2's G: 118.4; they would add 0.15).


def _block_macs(width: int, tokens: int) -> int:
    """One transformer block: qkv and output projections, SwiGLU, QK^T and AV (tokens^2 * width each)."""
    per_token = 4 * width * width + 3 * width * swiglu_hidden(width)
    return tokens * per_token + 2 * tokens * tokens * width


def generator_macs(size: NetSize, *, num_levels: int, latent_channels: int, latent_size: int) -> int:
    """Multiply-adds of G's token work for one sample: the blocks and the K output heads."""
    tokens = (latent_size // size.patch) ** 2
    heads = num_levels * tokens * size.width * size.patch**2 * latent_channels
    return size.depth * _block_macs(size.width, tokens) + heads


def discriminator_macs(size: NetSize, *, in_channels: int, latent_size: int, cmap_dim: int = CMAP_DIM) -> int:
    """Multiply-adds of D's token work for one sample, up to the logit: patch embedding, blocks
    (with the cls token) and the cls head; the REPA projector, used only for the REPA loss on
    reals, is not included."""
    patches = (latent_size // size.patch) ** 2
    embed = patches * in_channels * size.patch**2 * size.width
    return embed + size.depth * _block_macs(size.width, patches + 1) + size.width * cmap_dim


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(
    cfg: RunConfig,
    *,
    latent_channels: int = 4,
    latent_size: int = 32,
    num_classes: int = 1000,
    repa_dim: int | None = 768,
) -> dict:
    """Sizes, costs, MNG levels and per-rule LRs of this run's G and D (model.json plus `lr`).

    `discriminator_params` excludes the REPA projector; `discriminator_projector_params` is the
    projector alone (0 when `repa_dim` is None). GFLOPs: see `generator_macs` (DiT convention).
    """
    g_size, d_size = generator_size(cfg.model), discriminator_size(cfg.model)
    with torch.device("meta"):  # shapes only: even XL costs no memory or init time to build
        G = build_generator(cfg, latent_channels=latent_channels, latent_size=latent_size, num_classes=num_classes)
        D = build_discriminator(
            cfg, latent_channels=latent_channels, latent_size=latent_size, num_classes=num_classes, repa_dim=repa_dim
        )
    projector_params = _count(D.projector) if D.projector is not None else 0
    train = cfg.train
    return {
        "generator_params": _count(G),
        "discriminator_params": _count(D) - projector_params,
        "discriminator_projector_params": projector_params,
        "generator_gflops": generator_macs(
            g_size, num_levels=cfg.mng.levels, latent_channels=latent_channels, latent_size=latent_size
        ) / 1e9,
        "discriminator_gflops": discriminator_macs(
            d_size, in_channels=latent_channels * num_inputs(cfg.mng), latent_size=latent_size,
            cmap_dim=cfg.model.d_cmap_dim,
        ) / 1e9,
        "mng_noise_levels": noise_levels(cfg.mng),
        "g_width": g_size.width,
        "d_width": d_size.width,
        "g_depth": g_size.depth,
        "d_depth": d_size.depth,
        "g_heads": g_size.heads,
        "d_heads": d_size.heads,
        "patch": g_size.patch,
        "tokens": (latent_size // g_size.patch) ** 2,
        "lr": {
            rule: {
                "G": learning_rate(rule, g_size.width, train.base_lr, train.base_width),
                "D": learning_rate(rule, d_size.width, train.base_lr, train.base_width),
            }
            for rule in RULES
        },
    }
