"""Probe a trained generator block by block (paper §5.1): what each block contributes.

The public API the analysis layer calls (it never touches checkpoints itself):

    effects = probe_run(RUN_DIR, num=64)      # the run's EMA generator, newest checkpoint
    effects.ablation_latent                   # [blocks, num] per-sample effect of skipping block l
    effects.pca_maps                          # [blocks + 1, maps, grid, grid, 3] feature PCA as RGB

For each block l of G, on a fixed probe set of (z, y):
- ablation: the final output with block l skipped (h_l = h_{l−1}) against the full output,
  ‖G_{−l}(z) − G(z)‖ / ‖G(z)‖ per sample in latent space, and the RMS difference of the decoded
  images in [0, 1] when the run's data has a decoder (a cheap stand-in for the paper's LPIPS);
- residual-update ratio ‖h_l − h_{l−1}‖ / ‖h_{l−1}‖ per sample;
- PCA maps: the top-3 principal components of the block's token features, fitted per block over
  the first few probe samples, shown as RGB over the token grid (Fig. 4a of the paper).

Per-sample values (not means) are kept so the caller can bootstrap over probe samples.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from contract.config import load_run_config
from contract.errors import ConfigError
from gat.data import load_decoder
from gat.models import Generator
from gat.sample import load_ema_generator

# Percentiles that map a principal component onto [0, 1]: robust to a few extreme tokens.
_PCA_CLIP = (1.0, 99.0)


@dataclass(frozen=True)
class ProbeSet:
    """Fixed generator inputs: latents z [N, z_dim] and class labels y [N]."""

    z: Tensor
    y: Tensor


@dataclass
class BlockEffects:
    """What each block of one generator does on one probe set (arrays are per block, per sample)."""

    ablation_latent: np.ndarray
    ablation_pixel: np.ndarray | None
    update_ratio: np.ndarray
    pca_maps: np.ndarray

    @property
    def num_blocks(self) -> int:
        return int(self.ablation_latent.shape[0])


def probe_set(num: int, z_dim: int, num_classes: int, seed: int = 0) -> ProbeSet:
    """`num` probe inputs from `seed`, classes balanced (round-robin), drawn on CPU so every
    run of a study (and every device) is probed on the same inputs."""
    generator = torch.Generator().manual_seed(seed)
    return ProbeSet(z=torch.randn(num, z_dim, generator=generator), y=torch.arange(num) % num_classes)


def per_sample_relative(new: Tensor, ref: Tensor) -> Tensor:
    """‖new_b − ref_b‖ / ‖ref_b‖ for every sample b (a zero reference gives 0, not NaN)."""
    num = (new.float() - ref.float()).flatten(1).norm(dim=1)
    den = ref.float().flatten(1).norm(dim=1)
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))


def per_sample_rms(new: Tensor, ref: Tensor) -> Tensor:
    """Root-mean-square difference per sample (images in [0, 1]: an absolute pixel distance)."""
    return (new.float() - ref.float()).flatten(1).pow(2).mean(dim=1).sqrt()


def pca_rgb(tokens: Tensor, grid: int) -> np.ndarray:
    """Top-3 principal components of tokens [M, N, D] (fitted jointly over the M samples) as RGB
    maps [M, grid, grid, 3] in [0, 1].

    Each component's sign is fixed so that its largest loading is positive, which keeps the
    colours of neighbouring blocks comparable instead of flipping at random.
    """
    samples, count, dim = tokens.shape
    if count != grid * grid:
        raise ValueError(f"{count} tokens do not form a {grid}x{grid} grid")
    flat = tokens.reshape(-1, dim).double()
    centred = flat - flat.mean(dim=0)
    covariance = centred.T @ centred / max(len(centred) - 1, 1)
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    top = vectors[:, -3:].flip(1) if dim >= 3 else torch.nn.functional.pad(vectors.flip(1), (0, 3 - dim))
    signs = torch.sign(top.gather(0, top.abs().argmax(dim=0, keepdim=True)))
    components = (centred @ (top * torch.where(signs == 0, 1.0, signs))).numpy()
    low, high = np.percentile(components, _PCA_CLIP, axis=0)
    scaled = np.clip((components - low) / np.where(high > low, high - low, 1.0), 0.0, 1.0)
    return scaled.reshape(samples, grid, grid, 3).astype(np.float32)


@torch.no_grad()
def block_effects(
    G: Generator,
    probe: ProbeSet,
    *,
    decoder: Callable[[Tensor], Tensor] | None = None,
    pca_samples: int = 4,
    batch: int = 32,
) -> BlockEffects:
    """Ablation, residual-update ratio and PCA maps of every block of `G` on `probe`."""
    if len(probe.z) == 0:
        raise ValueError("the probe set is empty")
    device = next(G.parameters()).device
    blocks = len(G.blocks)
    latent, pixel, update = [], [], []
    pca_hidden: list[Tensor] | None = None
    for start in range(0, len(probe.z), batch):
        z, y = probe.z[start:start + batch].to(device), probe.y[start:start + batch].to(device)
        w = G.mapping(z, y)
        outputs, hidden = G.synthesize(w, return_hidden=True)
        full = outputs[-1]
        skipped = [G.synthesize(w, skip_block=block)[-1] for block in range(blocks)]
        latent.append(torch.stack([per_sample_relative(x, full) for x in skipped]))
        update.append(torch.stack([per_sample_relative(after, before) for before, after in zip(hidden[:-1], hidden[1:])]))
        if decoder is not None:
            image = decoder(full)
            pixel.append(torch.stack([per_sample_rms(decoder(x), image) for x in skipped]))
        if pca_hidden is None:
            pca_hidden = [h[:pca_samples].float().cpu() for h in hidden]
    grid = math.isqrt(pca_hidden[0].shape[1])
    return BlockEffects(
        ablation_latent=torch.cat(latent, dim=1).cpu().numpy(),
        ablation_pixel=torch.cat(pixel, dim=1).cpu().numpy() if decoder is not None else None,
        update_ratio=torch.cat(update, dim=1).cpu().numpy(),
        pca_maps=np.stack([pca_rgb(h, grid) for h in pca_hidden]),
    )


def run_decoder(run_dir: Path, device: torch.device) -> Callable[[Tensor], Tensor] | None:
    """The run's latent decoder, or None (with a warning) when its data has none available
    here, e.g. a hub VAE on a machine without network or cache."""
    config = load_run_config(run_dir)
    try:
        return load_decoder(config.data).to(device).eval()
    except (ConfigError, RuntimeError, OSError) as err:
        warnings.warn(f"{run_dir}: no decoder ({err}); pixel-space ablation skipped", stacklevel=2)
        return None


def probe_run(
    run_dir: str | Path,
    *,
    num: int = 64,
    seed: int = 0,
    decode: bool = True,
    pca_samples: int = 4,
    step: int | None = None,
    device: str | torch.device = "cpu",
) -> BlockEffects:
    """`block_effects` of a run's EMA generator (newest checkpoint, or the snapshot at `step`)
    on `probe_set(num, seed=seed)`; pixel distances too when `decode` and a decoder exists."""
    run_dir, device = Path(run_dir), torch.device(device)
    G, dims = load_ema_generator(run_dir, device, step)
    decoder = run_decoder(run_dir, device) if decode else None
    probe = probe_set(num, G.z_dim, dims["num_classes"], seed)
    return block_effects(G, probe, decoder=decoder, pca_samples=pca_samples)
