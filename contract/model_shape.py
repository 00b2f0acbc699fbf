"""What a run's G and D are, from its config alone: sizes, parameter counts, GFLOPs (model.json).

Torch-free, so the planner (`sweeps.costs`) and the analysis (`analysis.load`, for a run folder
without model.json) size a run without building it; the trainer writes `describe`'s dict as
model.json. The counts follow `gat.models.generator` / `gat.models.discriminator` layer by
layer, and tests/test_model_shape.py holds them equal to torch's count of the real networks.

GFLOPs follow DiT's convention: multiply-adds (x1e9) of one forward pass for one sample. Only
work on tokens is counted (every linear applied to token activations, and the attention
matmuls), so the cost scales with the token count; the per-sample MLPs on w and on class
embeddings (mapping, modulation, D's class-embedding MLP) are left out, as in the paper's
figures (GAT-XL/2's G: 118.4; they would add 0.15). `contract.flops` turns them into training
FLOPs.
"""
from __future__ import annotations

from typing import Any

from contract.config import ModelConfig, RunConfig
from contract.errors import ConfigError
from contract.lr_rules import RULES, learning_rate
from contract.mng import noise_levels, num_inputs
from contract.sizes import NetSize, check_size, parse_size

CMAP_DIM = 2048  # the paper's width of D's projection head and of the class embedding it is scored against

# `describe`'s defaults: ImageNet-256 through the SD-VAE (4x32x32 latents, 1000 classes) with
# REPA on DINOv2-B features (768-d), the paper's setting.
IMAGENET_LATENT_CHANNELS, IMAGENET_LATENT_SIZE, IMAGENET_CLASSES, DINOV2_DIM = 4, 32, 1000, 768


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


def swiglu_hidden(dim: int) -> int:
    """SwiGLU hidden size int(2/3 * 4d): keeps the FFN at the cost of a 4d GELU MLP."""
    return int(2 / 3 * 4 * dim)


# --- parameters -------------------------------------------------------------------------------


def _linear(in_dim: int, out_dim: int) -> int:
    """A dense layer with bias (nn.Linear, EqualLinear)."""
    return in_dim * out_dim + out_dim


def _attention_and_ffn_params(width: int, heads: int) -> int:
    """What G's and D's blocks share: qkv and output projections, the per-head QK-norm gains,
    and the SwiGLU (W1 and W2 fused, W3)."""
    hidden = swiglu_hidden(width)
    attention = _linear(width, 3 * width) + 2 * (width // heads) + _linear(width, width)
    return attention + _linear(width, 2 * hidden) + _linear(hidden, width)


def generator_params(
    size: NetSize, *, num_levels: int, latent_channels: int, num_classes: int, z_dim: int
) -> int:
    """G's parameters: class embedding, mapping MLP, the blocks (unnormed RMSNorms, plus the
    4-way scale/gate modulation from w) and the K output heads (modulation and linear)."""
    width = size.width
    mapping = num_classes * z_dim + _linear(2 * z_dim, width) + _linear(width, width)
    block = _attention_and_ffn_params(width, size.heads) + _linear(width, 4 * width)
    head = _linear(width, width) + _linear(width, size.patch**2 * latent_channels)
    return mapping + size.depth * block + num_levels * head


def discriminator_params(size: NetSize, *, in_channels: int, num_classes: int, cmap_dim: int = CMAP_DIM) -> int:
    """D's parameters without the REPA projector: patch embedding, cls token, the blocks (two
    affine RMSNorms and two LayerScales each), the projection head, the class embedding and
    its MLP."""
    width = size.width
    embed = in_channels * size.patch**2 * width + width + width  # conv weight and bias, cls token
    block = _attention_and_ffn_params(width, size.heads) + 4 * width
    head = width + _linear(width, cmap_dim)
    classes = num_classes * cmap_dim + 2 * _linear(cmap_dim, cmap_dim)
    return embed + size.depth * block + head + classes


def projector_params(width: int, *, hidden: int, repa_dim: int | None) -> int:
    """REPA's 3-layer projector from D's tokens to the encoder's features; 0 without REPA
    (D builds none for a falsy `repa_dim`)."""
    if not repa_dim:
        return 0
    return _linear(width, hidden) + _linear(hidden, hidden) + _linear(hidden, repa_dim)


# --- multiply-adds ----------------------------------------------------------------------------


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


# --- model.json -------------------------------------------------------------------------------


def describe(
    cfg: RunConfig,
    *,
    latent_channels: int = IMAGENET_LATENT_CHANNELS,
    latent_size: int = IMAGENET_LATENT_SIZE,
    num_classes: int = IMAGENET_CLASSES,
    repa_dim: int | None = DINOV2_DIM,
) -> dict[str, Any]:
    """Sizes, costs, MNG levels and per-rule LRs of this run's G and D (model.json plus `lr`).

    `discriminator_params` excludes the REPA projector; `discriminator_projector_params` is the
    projector alone (0 when `repa_dim` is None). GFLOPs: see `generator_macs` (DiT convention).
    A size the networks cannot be built at raises ConfigError.
    """
    g_size, d_size = generator_size(cfg.model), discriminator_size(cfg.model)
    if latent_size % g_size.patch:  # the networks' own check, so no size is described that cannot be built
        raise ConfigError(f"latent size {latent_size} is not divisible by model.patch={g_size.patch}")
    if not 1 <= cfg.mng.levels <= g_size.depth:  # G taps one output head per level after its own block
        raise ConfigError(f"need 1 <= mng.levels <= model.depth, got {cfg.mng.levels} levels for depth {g_size.depth}")
    d_in_channels = latent_channels * num_inputs(cfg.mng)
    train = cfg.train
    return {
        "generator_params": generator_params(
            g_size, num_levels=cfg.mng.levels, latent_channels=latent_channels, num_classes=num_classes,
            z_dim=cfg.model.z_dim,
        ),
        "discriminator_params": discriminator_params(
            d_size, in_channels=d_in_channels, num_classes=num_classes, cmap_dim=cfg.model.d_cmap_dim
        ),
        "discriminator_projector_params": projector_params(
            d_size.width, hidden=cfg.repa.projector_hidden, repa_dim=repa_dim
        ),
        "generator_gflops": generator_macs(
            g_size, num_levels=cfg.mng.levels, latent_channels=latent_channels, latent_size=latent_size
        ) / 1e9,
        "discriminator_gflops": discriminator_macs(
            d_size, in_channels=d_in_channels, latent_size=latent_size, cmap_dim=cfg.model.d_cmap_dim
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


# Latent shape (channels, size) and classes per data.kind: the Fashion-MNIST tiny VAE maps
# 32x32 to 4x8x8; the ImageNet-256 layouts use the SD-VAE's 4x32x32.
DATA_SHAPES = {"fashion_mnist": (4, 8, 10), "latents": (4, 32, 1000), "repa": (4, 32, 1000)}


def describe_run(cfg: RunConfig) -> dict[str, Any]:
    """`describe` at the latent shape and classes that `cfg.data.kind` implies: what the run's
    model.json will say (the REPA projector sized for DINOv2; the trainer knows the encoder's
    real width once it loads it)."""
    channels, size, classes = DATA_SHAPES.get(cfg.data.kind, DATA_SHAPES["latents"])
    repa_dim = DINOV2_DIM if cfg.repa.encoder != "none" else None
    return describe(cfg, latent_channels=channels, latent_size=size, num_classes=classes, repa_dim=repa_dim)
