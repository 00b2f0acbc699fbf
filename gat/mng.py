"""MNG: multi-level noise-perturbed image guidance (paper §3).

G emits K accumulated outputs x̂_1…x̂_K (shallow → deep). D sees all of them at once,
concatenated on channels, each perturbed in rectified-flow form

    x̃_k = (1 − t_k)·x_k + n_k,    std(n_k) = t_k,

with noise strength t_k falling with depth. The noise is nested: n_K ~ N(0, t_K²) and each
shallower level rescales the deeper noise by (1 − t_k)/(1 − t_{k+1}) and tops it up with fresh
Gaussian noise, so K copies of one real latent form a single consistent forward trajectory
(x̃_k = ((1 − t_k)/(1 − t_{k+1}))·x̃_{k+1} + fresh noise).

Modes (`MNGConfig.mode`):
- `exp`: t_k = 1 − i_min^(1−λ_k) + offset, λ_k = (k−1)/(K−1); the signal 1 − t_k (before the
  offset) doubles per level for i_min = 1/8 (K=4: t = 0.885, 0.76, 0.51, 0.01).
- `lin`: the signal before the offset rises linearly from i_min to 1,
  t_k = (1 − i_min)·(1 − λ_k) + offset (K=4: t = 0.885, 0.5933…, 0.3017…, 0.01).
- `msg`: MSG-GAN-style multi-scale input, no noise. Level k is resized (area) to
  H / 2^(K−k) and back up (nearest) to H, so D's channel-concat input keeps one shape while the
  shallower levels carry only coarse content.
- `off`: vanilla GAT. D sees only the final output, clean, as in the official code's
  single-scale path (which adds no Gaussian noise at all).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contract.config import MNGConfig
# The schedule itself (noise_levels, num_inputs, NOISY_MODES) lives in contract.mng, torch-free, so
# the planner can size D without torch; it is imported here for use only: callers import it from
# contract.mng, its one home.
from contract.mng import NOISY_MODES, noise_levels, num_inputs

__all__ = ["nest_noise", "perturb", "sample_noise", "select_levels"]


def select_levels(outputs: list[Tensor], cfg: MNGConfig) -> list[Tensor]:
    """The generator outputs D sees: the last `num_inputs(cfg)` of them (`off`: the final image)."""
    count = num_inputs(cfg)
    if len(outputs) < count:
        raise ValueError(f"the generator gave {len(outputs)} outputs but mng needs {count}")
    return list(outputs[-count:])


def sample_noise(like: Tensor, cfg: MNGConfig, generator: torch.Generator | None = None) -> list[Tensor]:
    """One nested noise draw n_1…n_K (shallow → deep) shaped like `like`, std(n_k) = t_k.

    Empty for `msg` and `off`, which add no noise. Kept apart from `perturb` so the penalties
    can reuse the exact draw the adversarial term saw.
    """
    if cfg.mode not in NOISY_MODES:
        return []
    fresh = [torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
             for _ in range(num_inputs(cfg))]
    return nest_noise(fresh, cfg)


def nest_noise(fresh: list[Tensor], cfg: MNGConfig) -> list[Tensor]:
    """The nested noise n_1…n_K (shallow → deep) built from K unit Gaussian draws `fresh`,
    deepest level's first (the order `sample_noise` draws them in, as the official code)."""
    levels = noise_levels(cfg)
    if len(fresh) != len(levels):
        raise ValueError(f"mng.mode={cfg.mode} nests {len(levels)} draws, got {len(fresh)}")
    noise: list[Tensor] = []
    deeper_t = 0.0
    cumulative = torch.zeros_like(fresh[0])
    for t, draw in zip(reversed(levels), fresh):
        decay = (1.0 - t) / (1.0 - deeper_t)
        # Fresh variance that brings the rescaled deeper noise up to a total of t².
        fresh_var = max(t * t - (deeper_t * decay) ** 2, 0.0)
        cumulative = cumulative * decay + draw * fresh_var ** 0.5
        noise.append(cumulative)
        deeper_t = t
    return noise[::-1]


def perturb(levels: list[Tensor], noise: list[Tensor], cfg: MNGConfig) -> Tensor:
    """D's input [B, K*C, H, W]: level k perturbed as x̃_k = (1 − t_k)·x_k + n_k, on channels.

    `levels` are the selected generator outputs, or K copies of the same real latent.
    `msg` resizes instead of adding noise; `off` passes the single level through.
    """
    count = num_inputs(cfg)
    if len(levels) != count:
        raise ValueError(f"mng.mode={cfg.mode} expects {count} levels, got {len(levels)}")
    if cfg.mode == "off":
        return levels[0]
    if cfg.mode == "msg":
        return torch.cat([_rescale(x, 2 ** (count - 1 - k)) for k, x in enumerate(levels)], dim=1)
    if len(noise) != count:
        raise ValueError(f"mng.mode={cfg.mode} expects {count} noise tensors, got {len(noise)}")
    ts = noise_levels(cfg)
    return torch.cat([(1.0 - t) * x + n for t, x, n in zip(ts, levels, noise)], dim=1)


def _rescale(x: Tensor, factor: int) -> Tensor:
    """Down by `factor` (area average) and back up (nearest): coarse content at full size."""
    if factor == 1:
        return x
    height, width = x.shape[-2:]
    small = F.interpolate(x, size=(max(height // factor, 1), max(width // factor, 1)), mode="area")
    return F.interpolate(small, size=(height, width), mode="nearest")
