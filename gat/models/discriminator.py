"""GAT's discriminator (paper §1.4): a plain ViT with a cls token and a projection head.

The K MNG levels arrive concatenated on channels and are patchified jointly, so one token
sequence and one logit judge the whole tuple. The logit is the projection-discriminator
score <phi(cls), e_y>; class information enters only there, never inside the blocks.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contract.model_shape import CMAP_DIM
from gat.models.layers import (
    Attention,
    AxialRoPE,
    RMSNorm,
    SwiGLU,
    init_linears,
    mapping_mlp,
    run_block,
    sincos_pos_embed,
    upcast,
)

_LAYERSCALE_INIT = 0.1


class DiscriminatorBlock(nn.Module):
    """Pre-norm block with affine RMSNorm and LayerScale on both residual branches."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, heads)
        self.scale_attn = nn.Parameter(torch.full((dim,), _LAYERSCALE_INIT))
        self.norm2 = RMSNorm(dim)
        self.ffn = SwiGLU(dim)
        self.scale_ffn = nn.Parameter(torch.full((dim,), _LAYERSCALE_INIT))

    def forward(self, x: Tensor, rope: AxialRoPE) -> Tensor:
        x = x + self.scale_attn * self.attn(self.norm1(x), rope)
        return x + self.scale_ffn * self.ffn(self.norm2(x))


def repa_projector(dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """REPA's 3-layer MLP from D's tokens to the frozen encoder's feature space."""
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out_dim)
    )


class Discriminator(nn.Module):
    """D(x [B, in_channels, H, W], y [B]) -> (logits [B], last-block tokens [B, 1+N, width])."""

    def __init__(
        self,
        *,
        width: int,
        depth: int,
        heads: int,
        patch: int,
        in_channels: int,
        latent_size: int,
        num_classes: int,
        repa_dim: int | None = None,
        cmap_dim: int = CMAP_DIM,
        projector_hidden: int = 2048,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if latent_size % patch:
            raise ValueError(f"latent size {latent_size} is not divisible by patch {patch}")
        self.grad_checkpointing = grad_checkpointing
        grid = latent_size // patch

        self.patch_embed = nn.Conv2d(in_channels, width, kernel_size=patch, stride=patch)
        self.register_buffer("pos_embed", sincos_pos_embed(width, grid)[None], persistent=False)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.rope = AxialRoPE(width // heads, grid, num_prefix=1)
        self.blocks = nn.ModuleList(DiscriminatorBlock(width, heads) for _ in range(depth))
        self.head = nn.Sequential(RMSNorm(width), nn.Linear(width, cmap_dim))
        self.class_embed = nn.Embedding(num_classes, cmap_dim)
        self.class_mapping = mapping_mlp(cmap_dim, cmap_dim)
        self.projector = repa_projector(width, projector_hidden, repa_dim) if repa_dim else None

        init_linears(self)
        nn.init.normal_(self.class_embed.weight, std=0.02)
        # The head's bias adds <b, e_y> to every logit of class y, and every loss term compares
        # two logits of one label, so its gradient is zero in exact arithmetic. In floats the
        # +/− contributions leave rounding noise, which Adam (β1 = 0) turns into steps of up to
        # lr: with one batched D pass |b| drifted to 1.2 in 1500 steps (the official code's
        # separate passes drift less, not zero, under the approximate penalty). b cannot change
        # a loss but does shift the logits that diagnostics measure, so it keeps its initial 0.
        self.head[1].bias.register_hook(torch.zeros_like)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Projection logits [B] and the last block's tokens (cls first)."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        for block in self.blocks:
            tokens = run_block(block, self.grad_checkpointing, tokens, self.rope)
        # The head runs in (at least) fp32 even under bf16 autocast: aR1/aR2 divide logit
        # differences by sigma=0.01, and bf16 logits would turn that difference into rounding noise.
        can_autocast = torch.amp.is_autocast_available(x.device.type)
        with torch.autocast(x.device.type, enabled=False) if can_autocast else contextlib.nullcontext():
            class_code = self.class_code(y)
            logits = (self.head(upcast(tokens[:, 0])) * class_code).sum(-1)
        return logits, tokens

    def class_code(self, y: Tensor) -> Tensor:
        """The class MLP's code e_y [B, cmap_dim] for labels y, in (at least) float32.

        The code depends on the label alone, so when the batch has more rows than there are
        classes (the trainer scores reals, fakes and their shifted copies in one pass) it is
        computed once per class and gathered.
        """
        if self.class_embed.num_embeddings < y.shape[0]:
            # Gathered with `embedding`, whose backward sums rows in a fixed order; indexing's
            # backward accumulates in thread order and breaks bitwise repeatability on 2+ threads.
            return F.embedding(y, self.class_mapping(upcast(self.class_embed.weight)))
        return self.class_mapping(upcast(self.class_embed(y)))

    def project(self, tokens: Tensor) -> Tensor:
        """REPA projection of every token [B, 1+N, width] -> [B, 1+N, repa_dim]."""
        if self.projector is None:
            raise RuntimeError("this discriminator was built without a REPA projector (repa_dim=None)")
        return self.projector(tokens)
