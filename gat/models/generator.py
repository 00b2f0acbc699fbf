"""GAT's generator (paper §1.3): a style-modulated ViT over a constant token grid.

    (z, y) --mapping--> w
    constant sin-cos grid --block_1 ... block_L--> tokens, with K RGB heads tapped on the way
    x̂_k = Σ_{j<=k} head_j(tokens after stage j)          (StyleGAN2-style skip outputs)

All randomness enters through w; the token grid itself is fixed. The K accumulated outputs
x̂_1 … x̂_K feed MNG (gat/mng.py); x̂_K is the image.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from gat.models.layers import (
    Attention,
    AxialRoPE,
    RMSNorm,
    SwiGLU,
    init_linears,
    mapping_mlp,
    normalize_2nd_moment,
    run_block,
    sincos_pos_embed,
    unpatchify,
)

_MODULATION_GAIN = 0.1  # modulation starts near zero: every block begins close to identity


def _modulation(w_dim: int, out_dim: int) -> nn.Sequential:
    """SiLU -> Linear(w -> out); `Generator` initialises it with xavier gain 0.1, zero bias."""
    return nn.Sequential(nn.SiLU(), nn.Linear(w_dim, out_dim))


def stage_ends(depth: int, levels: int) -> list[int]:
    """Block counts after which the K heads tap the tokens: round(depth*k/K), k = 1..K.

    Equal stages when K divides depth (XL: 7, 14, 21, 28); otherwise the stages differ by at
    most one block. Strictly increasing whenever depth >= K, and the last is always depth.
    """
    if not 1 <= levels <= depth:
        raise ValueError(f"need 1 <= mng.levels <= depth, got {levels} levels for depth {depth}")
    return [(depth * k + levels // 2) // levels for k in range(1, levels + 1)]


class GeneratorBlock(nn.Module):
    """Pre-norm block with scale-and-gate modulation from w (no shift):
    x += gate * Attn(RMSNorm(x) * (1 + scale)), then the same for the FFN."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim, affine=False)
        self.attn = Attention(dim, heads)
        self.norm2 = RMSNorm(dim, affine=False)
        self.ffn = SwiGLU(dim)
        self.modulation = _modulation(dim, 4 * dim)

    def forward(self, x: Tensor, w: Tensor, rope: AxialRoPE) -> Tensor:
        scale_attn, gate_attn, scale_ffn, gate_ffn = self.modulation(w).unsqueeze(1).chunk(4, dim=-1)
        x = x + gate_attn * self.attn(self.norm1(x) * (1 + scale_attn), rope)
        return x + gate_ffn * self.ffn(self.norm2(x) * (1 + scale_ffn))


class OutputHead(nn.Module):
    """An intermediate "RGB" layer: RMSNorm, scale modulation from w, Linear(d -> p*p*C)."""

    def __init__(self, dim: int, patch: int, channels: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, affine=False)
        self.modulation = _modulation(dim, dim)
        self.linear = nn.Linear(dim, patch * patch * channels)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        return self.linear(self.norm(x) * (1 + self.modulation(w).unsqueeze(1)))


class Generator(nn.Module):
    """G(z, y) -> [x̂_1, …, x̂_K] latents [B, C, H, W], shallow to deep.

    `blocks` are the transformer blocks, `heads` the K output heads, tapped after
    `head_after[k]` blocks; `w_avg` [num_classes, width] is the per-class mean of w.
    """

    def __init__(
        self,
        *,
        width: int,
        depth: int,
        heads: int,
        patch: int,
        num_levels: int,
        latent_channels: int,
        latent_size: int,
        num_classes: int,
        z_dim: int = 64,
        w_avg_beta: float = 0.995,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if latent_size % patch:
            raise ValueError(f"latent size {latent_size} is not divisible by patch {patch}")
        self.width, self.patch, self.z_dim = width, patch, z_dim
        self.num_classes, self.num_levels = num_classes, num_levels
        self.latent_channels = latent_channels
        self.w_avg_beta = w_avg_beta
        self.grad_checkpointing = grad_checkpointing
        self.head_after = stage_ends(depth, num_levels)
        grid = latent_size // patch

        self.class_embed = nn.Embedding(num_classes, z_dim)
        self.mapping_net = mapping_mlp(2 * z_dim, width)
        self.register_buffer("input_tokens", sincos_pos_embed(width, grid)[None], persistent=False)
        self.rope = AxialRoPE(width // heads, grid)
        self.blocks = nn.ModuleList(GeneratorBlock(width, heads) for _ in range(depth))
        self.heads = nn.ModuleList(OutputHead(width, patch, latent_channels) for _ in range(num_levels))
        self.register_buffer("w_avg", torch.zeros(num_classes, width))

        # The generic init first, then the modulation layers' small gain on top of it.
        init_linears(self.blocks)
        init_linears(self.heads)
        for module in self.modules():
            if isinstance(module, (GeneratorBlock, OutputHead)):
                nn.init.xavier_uniform_(module.modulation[1].weight, gain=_MODULATION_GAIN)
        nn.init.normal_(self.class_embed.weight, std=0.02)

    def mapping(self, z: Tensor, y: Tensor) -> Tensor:
        """Style vector w [B, width] from latent z [B, z_dim] and class labels y [B]."""
        code = torch.cat([normalize_2nd_moment(self.class_embed(y)), normalize_2nd_moment(z)], dim=1)
        return self.mapping_net(code)

    def truncate(self, w: Tensor, y: Tensor, psi: float) -> Tensor:
        """w + psi (w̄_y - w): psi = 0 leaves w alone, psi = 1 gives the class mean."""
        return w.lerp(self.w_avg[y].to(w.dtype), psi)

    @torch.no_grad()
    def update_w_avg(self, w: Tensor, y: Tensor) -> None:
        """Per-class EMA of w: w̄_c <- beta w̄_c + (1 - beta) mean(w of class c in this batch)."""
        sums = torch.zeros_like(self.w_avg).index_add_(0, y, w.detach().to(self.w_avg.dtype))
        counts = torch.bincount(y, minlength=self.num_classes)
        present = counts > 0
        batch_mean = sums[present] / counts[present, None]
        self.w_avg[present] = batch_mean.lerp(self.w_avg[present], self.w_avg_beta)

    def synthesize(
        self, w: Tensor, *, skip_block: int | None = None, return_hidden: bool = False
    ) -> list[Tensor] | tuple[list[Tensor], list[Tensor]]:
        """The K accumulated outputs for style w.

        skip_block: index into `self.blocks` of a block to leave out (its output equals its
        input), for the block-ablation diagnostic. return_hidden: also return the token tensors
        [input, after block 1, …, after block L].
        """
        x = self.input_tokens.expand(w.shape[0], -1, -1)
        hidden, outputs = [x], []
        image: Tensor | None = None
        for index, block in enumerate(self.blocks):
            if index != skip_block:
                x = run_block(block, self.grad_checkpointing, x, w, self.rope)
            hidden.append(x)
            if index + 1 in self.head_after:
                head = self.heads[len(outputs)]
                level = unpatchify(head(x, w), self.patch, self.latent_channels)
                image = level if image is None else image + level
                outputs.append(image)
        return (outputs, hidden) if return_hidden else outputs

    def forward(self, z: Tensor, y: Tensor, psi: float = 0.0) -> list[Tensor]:
        """[x̂_1, …, x̂_K] for latents z and labels y, truncated toward the class mean by psi."""
        w = self.mapping(z, y)
        if psi:
            w = self.truncate(w, y, psi)
        return self.synthesize(w)
