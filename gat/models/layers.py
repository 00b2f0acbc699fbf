"""Pieces the generator and the discriminator share: norms, attention, FFN, positions, patches.

Both networks are plain pre-norm ViTs (paper §1.3-1.4). What they share lives here; what makes
them differ (G's style modulation, D's cls token and LayerScale) lives in their own modules.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as recompute

from contract.model_shape import swiglu_hidden  # the contract counts the FFN's parameters and MACs with it


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim, optionally with a learned per-channel gain.

    Normalises in at least float32 and returns the input dtype, so bf16 activations stay bf16
    and the q/k/v handed to SDPA keep one dtype.
    """

    def __init__(self, dim: int, affine: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        out = rms_normalize(x, self.eps)
        if self.weight is not None:
            out = out * upcast(self.weight)
        return out.to(x.dtype)


def upcast(x: Tensor) -> Tensor:
    """x in at least float32: bf16/fp16 widen to float32, float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def rms_normalize(x: Tensor, eps: float) -> Tensor:
    """x / sqrt(mean(x², last dim) + eps) in at least float32."""
    x = upcast(x)
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)


class EqualLinear(nn.Module):
    """StyleGAN's equalised linear layer with a learning-rate multiplier.

    The stored weight is the effective one divided by `lr_mult`, so Adam's steps on it move the
    effective weight `lr_mult` times as far: the mapping networks train 100x slower (0.01).
    The effective weight starts xavier-uniform and the bias at zero.
    """

    def __init__(self, in_dim: int, out_dim: int, lr_mult: float = 1.0) -> None:
        super().__init__()
        self.lr_mult = lr_mult
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        nn.init.xavier_uniform_(self.weight, gain=1.0 / lr_mult)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.lr_mult, self.bias * self.lr_mult)


def mapping_mlp(in_dim: int, out_dim: int, lr_mult: float = 0.01) -> nn.Sequential:
    """Two equalised layers, Linear-SiLU-Linear: G's z/class mapping and D's class embedding."""
    return nn.Sequential(EqualLinear(in_dim, out_dim, lr_mult), nn.SiLU(), EqualLinear(out_dim, out_dim, lr_mult))


def normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale each row to unit mean square (StyleGAN), so z and the class code weigh alike."""
    return x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps)


def init_linears(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every nn.Linear / nn.Conv2d (the official init).

    Run before any layer-specific init, which then overrides it.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(layer.weight.view(layer.weight.shape[0], -1))
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def sincos_pos_embed(dim: int, grid: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding [grid*grid, dim] (MAE/DiT layout, row-major tokens).

    The first half of the channels encodes the column, the second half the row.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


class AxialRoPE(nn.Module):
    """2-D rotary position embedding, EVA-02 style, over a square token grid.

    Half of each head's channels rotate with the token's row, the other half with its column;
    channels rotate in adjacent pairs. The first `num_prefix` tokens (D's cls) are not rotated.
    """

    def __init__(self, head_dim: int, grid: int, num_prefix: int = 0, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2-D RoPE needs a head dim divisible by 4, got {head_dim}")
        axis_dim = head_dim // 2
        freqs = 1.0 / theta ** (torch.arange(0, axis_dim, 2, dtype=torch.float32) / axis_dim)
        angles = torch.arange(grid, dtype=torch.float32)[:, None] * freqs  # [grid, axis_dim/2]
        angles = angles.repeat_interleave(2, dim=-1)  # each pair shares an angle
        rows = angles[:, None, :].expand(grid, grid, axis_dim)
        cols = angles[None, :, :].expand(grid, grid, axis_dim)
        full = torch.cat([rows, cols], dim=-1).reshape(grid * grid, head_dim)
        # Prefix tokens get angle 0 (cos 1, sin 0), which leaves them as they are without
        # slicing them off. The sign of rotate-half is folded into sin: pair (a, b) rotates
        # to (a·cos − b·sin, b·cos + a·sin) = (a, b)·cos + (b, a)·(−sin, sin).
        cos = torch.cat([torch.ones(num_prefix, head_dim), full.cos()])
        sin = torch.cat([torch.zeros(num_prefix, head_dim), full.sin()])
        sin = sin * torch.tensor([-1.0, 1.0]).repeat(head_dim // 2)
        # Recomputed from the shape, so they need not be in checkpoints.
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("signed_sin", sin, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., tokens, head_dim] → the same with the grid tokens rotated."""
        swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
        return x * self.cos.to(x.dtype) + swapped * self.signed_sin.to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with qkv bias, QK-norm (affine RMSNorm per head) and RoPE."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        # The official layer is nn.RMSNorm with eps=None, i.e. float32's eps for float32 inputs.
        self.q_norm = RMSNorm(head_dim, eps=torch.finfo(torch.float32).eps)
        self.k_norm = RMSNorm(head_dim, eps=torch.finfo(torch.float32).eps)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: AxialRoPE) -> Tensor:
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        # q and k are normalised and rotated as one tensor: half the elementwise ops.
        gains = torch.stack([self.q_norm.weight, self.k_norm.weight]).view(2, 1, 1, 1, -1)
        q, k = rope((rms_normalize(qkv[:2], self.q_norm.eps) * upcast(gains)).to(qkv.dtype))
        out = F.scaled_dot_product_attention(q, k, qkv[2])
        return self.proj(out.transpose(1, 2).flatten(2))


class SwiGLU(nn.Module):
    """FFN: W3 (SiLU(W1 x) * W2 x), with W1 and W2 fused into one matmul."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = swiglu_hidden(dim)
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


def unpatchify(tokens: Tensor, patch: int, channels: int) -> Tensor:
    """[B, N, p*p*C] row-major tokens → [B, C, H, W] with H = W = sqrt(N)*p."""
    grid = math.isqrt(tokens.shape[1])
    x = tokens.reshape(tokens.shape[0], grid, grid, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(tokens.shape[0], channels, grid * patch, grid * patch)


def run_block(block: nn.Module, checkpoint: bool, *args: object) -> Tensor:
    """Call a block, recomputing its activations in backward when `checkpoint` (saves memory)."""
    if checkpoint and torch.is_grad_enabled():
        return recompute(block, *args, use_reentrant=False)
    return block(*args)
