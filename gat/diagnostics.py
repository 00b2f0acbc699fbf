"""The two failure modes of paper §5 as numbers, measured on a fixed probe batch at eval ticks.

- Output speed (§5.2): the relative change of G's output and of D's logits over one
  optimiser step, ‖f_t − f_{t−1}‖ / ‖f_{t−1}‖, with everything but the weights held fixed.
  A fixed LR makes this grow with width; the width-aware rule should keep it flat.
- Early-layer underuse (§5.1): per block l of G, the residual-update ratio
  ‖h_l − h_{l−1}‖ / ‖h_{l−1}‖ and the ablation effect ‖G_{−l}(z) − G(z)‖ / ‖G(z)‖ (block l
  skipped). Without MNG the early entries should sit near zero.
- The official code's monitors: the std of G's and D's last-block activations.

Keys match `diagnostics` in docs/run_folder.md. The probe is a pure function of the seed, so a
resumed run measures on the same batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from contract.config import RunConfig
from contract.mng import num_inputs
from gat.mng import perturb, sample_noise

_PROBE_SEED_OFFSET = 7919  # keeps the probe's draws apart from the training seed's


@dataclass(frozen=True)
class Probe:
    """Fixed inputs: G's (z, y), and D's input built from real latents with fixed MNG noise."""

    z: Tensor
    y: Tensor
    d_input: Tensor
    d_labels: Tensor


def make_probe(dataset, config: RunConfig, z_dim: int, device: torch.device) -> Probe:
    """Draw the probe batch from `config.seed` (independent of the training RNG streams)."""
    count = min(config.eval.probe_batch, len(dataset))
    generator = torch.Generator().manual_seed(config.seed + _PROBE_SEED_OFFSET)
    indices = torch.randperm(len(dataset), generator=generator)[:count]
    reals, labels, _ = dataset.batch(indices, generator)
    z = torch.randn(count, z_dim, generator=generator)
    noise = sample_noise(reals, config.mng, generator)
    d_input = perturb([reals] * num_inputs(config.mng), noise, config.mng)
    return Probe(z=z.to(device), y=labels.to(device), d_input=d_input.to(device), d_labels=labels.to(device))


def relative_change(new: Tensor, old: Tensor) -> float:
    """‖new − old‖ / ‖old‖ over the whole tensor (0 when both are zero)."""
    old, new = old.float(), new.float()
    denominator = old.norm()
    return float((new - old).norm() / denominator) if denominator > 0 else 0.0


def _per_sample_ratio(delta: Tensor, base: Tensor) -> float:
    """Mean over samples of ‖delta_b‖ / ‖base_b‖."""
    num = delta.float().flatten(1).norm(dim=1)
    den = base.float().flatten(1).norm(dim=1).clamp_min(1e-12)
    return float((num / den).mean())


@torch.no_grad()
def measure(G: nn.Module, D: nn.Module, G_prev: nn.Module, D_prev: nn.Module, probe: Probe) -> dict:
    """All diagnostics for the current weights (G, D) against the previous step's (G_prev, D_prev)."""
    w = G.mapping(probe.z, probe.y)
    outputs, hidden = G.synthesize(w, return_hidden=True)
    image = outputs[-1]
    image_prev = G_prev.synthesize(G_prev.mapping(probe.z, probe.y))[-1]
    logits, tokens = D(probe.d_input, probe.d_labels)
    logits_prev, _ = D_prev(probe.d_input, probe.d_labels)

    update_ratio = [_per_sample_ratio(after - before, before) for before, after in zip(hidden[:-1], hidden[1:])]
    ablation = [relative_change(G.synthesize(w, skip_block=block)[-1], image) for block in range(len(G.blocks))]
    return {
        "g_output_change": relative_change(image, image_prev),
        "d_logit_change": relative_change(logits, logits_prev),
        "g_block_update_ratio": update_ratio,
        "g_block_ablation": ablation,
        "g_act_std": float(hidden[-1].float().std()),
        "d_act_std": float(tokens.float().std()),
    }
