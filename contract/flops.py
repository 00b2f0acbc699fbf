"""Training compute of one GAT run: FLOPs per image and cumulative FLOPs.

Conventions
-----------
* ``generator_gflops`` / ``discriminator_gflops`` in ``model.json`` (counted by
  ``contract.model_shape``) follow the DiT convention: billions of multiply-accumulates (MACs) of
  **one forward pass on one image** (DiT-XL/2 = 118.6, GAT-XL/2 G = 118.4). The x axis "GFLOPs"
  of the scaling plots is this number for G.
* Training compute is counted in real FLOPs: 1 MAC = 2 FLOPs, and a backward pass costs twice
  its forward (gradients w.r.t. activations and w.r.t. weights, Kaplan et al. 2020).

Passes per training iteration and per image of the batch (what `gat.step.train_step` runs)
------------------------------------------------------------------------------------------
G runs once per iteration: the D step uses its outputs detached, and the G step
backpropagates through the same graph (G does not change in between).
  * G forward + backward ......................................... 1 + 2 = 3 G fwd
D step (one batched pass over reals, fakes and the penalties' shifted copies)
  * D forward + backward on reals and on fakes ................... 2 × (1 + 2) = 6 D fwd
  * the approximated R1/R2 penalties: one extra D forward on the
    perturbed reals and one on the perturbed fakes, plus their
    backward ....................................................... 2 × (1 + 2) = 6 D fwd
G step
  * D forward + backward on the fakes (the gradient reaches G
    through D) ..................................................... 1 + 2 = 3 D fwd
  * D forward on the reals (relativistic pairing needs their logits) 1 D fwd

Total: 3 G fwd + 16 D fwd with penalties, 3 G fwd + 10 D fwd with ``loss.penalty: none``.
The exact R1/R2 (``loss.penalty: exact``) is counted like the approximated one: its double
backward costs about as much as the two extra forwards and their backward. Not counted: the
frozen REPA encoder and D's REPA projector (their cost is not in ``model.json``), the EMA
update, evaluation and sampling. MNG's extra input channels are already inside D's GFLOPs
(only D's patch embedding widens). The planner (`sweeps.costs`), the benchmark (`gat.bench`)
and the analysis table (`analysis.load`) all count with this module.
"""
from __future__ import annotations

FLOPS_PER_MAC = 2
BACKWARD_OVER_FORWARD = 2

_PENALTY_D_FORWARDS = {"approx": 2, "exact": 2, "none": 0}


def forward_passes(penalty: str = "approx") -> tuple[float, float]:
    """(G forward-equivalents, D forward-equivalents) per image per training iteration.

    A forward+backward counts 1 + ``BACKWARD_OVER_FORWARD`` forward-equivalents.
    """
    if penalty not in _PENALTY_D_FORWARDS:
        raise ValueError(f"unknown loss.penalty {penalty!r} (allowed: {', '.join(_PENALTY_D_FORWARDS)})")
    fwd_bwd = 1 + BACKWARD_OVER_FORWARD
    g = fwd_bwd  # one G forward serves both steps; its backward is the G step's
    d = 2 * fwd_bwd + fwd_bwd + 1  # D step: reals+fakes fwd/bwd; G step: fakes fwd/bwd + reals fwd
    d += _PENALTY_D_FORWARDS[penalty] * fwd_bwd
    return float(g), float(d)


def training_flops_per_image(g_gflops: float, d_gflops: float, penalty: str = "approx") -> float:
    """FLOPs (not GFLOPs) one image of the batch costs in one G+D training iteration."""
    g_passes, d_passes = forward_passes(penalty)
    return FLOPS_PER_MAC * 1e9 * (g_passes * g_gflops + d_passes * d_gflops)


def training_flops(images_seen: float, g_gflops: float, d_gflops: float, penalty: str = "approx") -> float:
    """Cumulative training FLOPs after ``images_seen`` real images (= steps × batch)."""
    return images_seen * training_flops_per_image(g_gflops, d_gflops, penalty)
