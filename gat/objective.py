"""The GAT objective (paper §2), R3GAN style: relativistic pairing loss, approximate or exact
R1/R2, and REPA alignment of D's tokens on reals.

    L_D = softplus(−(D(x̃_real) − D(x̃_fake))) + γ/2·(R1 + R2) + λ_REPA·L_REPA
    L_G = softplus(−(D(x̃_fake) − D(x̃_real)))

where x̃ is DiffAugment then MNG applied to the clean latents. `discriminator_loss` and
`generator_loss` assemble one step each so the trainer only runs G, calls them and steps. Their
random draws come from a `Draws` (by default the samplers themselves), so a test can record or
replay them without patching this module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from gat.augment import AugParams, apply, geometric_only, sample_params, tile, with_color_means
from contract.config import AugmentConfig, MNGConfig, RunConfig
from contract.mng import num_inputs
from gat.mng import perturb, sample_noise, select_levels
from gat.models.layers import upcast


class Critic(Protocol):
    """What the objective needs from the discriminator."""

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]: ...

    def project(self, tokens: Tensor) -> Tensor: ...


def d_adversarial(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """D's relativistic pairing loss: mean softplus(−(D(real) − D(fake))), pairs by batch index."""
    return F.softplus(fake_logits - real_logits).mean()


def g_adversarial(fake_logits: Tensor, real_logits: Tensor) -> Tensor:
    """G's relativistic pairing loss: mean softplus(−(D(fake) − D(real)))."""
    return F.softplus(real_logits - fake_logits).mean()


def shifted(levels: list[Tensor], sigma: float, generator: torch.Generator | None = None) -> list[Tensor]:
    """The finite-difference copies x + σε, ε ~ N(0, I), one draw per entry of `levels`.

    A real passed as one entry that the scorer repeats into K levels shares its ε across them,
    as in the official code.
    """
    return [x.detach() + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            for x in levels]


@dataclass(frozen=True)
class Draws:
    """Where the objective's random draws come from, each called with the step's generator:
    the augmentation of a view (`sample_params`'s signature), its MNG noise (`sample_noise`'s)
    and the penalties' finite-difference shifts (`shifted`'s). The defaults are those samplers;
    a test injects its own to record the draws or to replay another implementation's."""

    augment: Callable[[int, int, int, AugmentConfig, torch.Generator | None, torch.device | None], AugParams] = (
        sample_params
    )
    noise: Callable[[Tensor, MNGConfig, torch.Generator | None], list[Tensor]] = sample_noise
    shift: Callable[[list[Tensor], float, torch.Generator | None], list[Tensor]] = shifted


SAMPLERS = Draws()  # every draw from the step's generator, as training draws them


def approx_penalty(logits: Tensor, shifted_logits: Tensor, sigma: float) -> Tensor:
    """Finite-difference R1/R2: mean of ((D(x) − D(x + σε))/σ)² over the batch.

    Both logits must come from the same augmentation and MNG noise draw. E_ε of the penalty is
    ‖∇_x D‖² up to O(σ²), the exact penalty.
    """
    return ((upcast(logits) - upcast(shifted_logits)) / sigma).pow(2).mean()


def exact_penalty(logits: Tensor, levels: list[Tensor]) -> Tensor:
    """R1/R2 by autograd: mean over samples of ‖∇_x D‖², summed over `levels`, the clean
    inputs (requiring grad) that `logits` were computed from.

    The gradient graph is kept (create_graph) so the penalty trains D.
    """
    grads = torch.autograd.grad(logits.sum(), levels, create_graph=True)
    return sum(upcast(g).pow(2).flatten(1).sum(1) for g in grads).mean()


def repa_loss(projected: Tensor, target_cls: Tensor, target_patches: Tensor) -> Tensor:
    """(1 − cos) on cls plus the mean (1 − cos) over patches, averaged over the batch.

    `projected` is [B, 1+N, F] (cls first). Targets on another square grid are resized
    bicubically to D's grid, so the cls term weighs as much as all patches together.
    """
    cls, patches = upcast(projected[:, 0]), upcast(projected[:, 1:])
    target_patches = upcast(target_patches)
    if target_patches.shape[1] != patches.shape[1]:
        target_patches = _resize_tokens(target_patches, patches.shape[1])
    cls_term = 1.0 - F.cosine_similarity(cls, upcast(target_cls), dim=-1)
    patch_term = (1.0 - F.cosine_similarity(patches, target_patches, dim=-1)).mean(dim=1)
    return (cls_term + patch_term).mean()


def _resize_tokens(tokens: Tensor, count: int) -> Tensor:
    """[B, N, F] tokens on a square grid → [B, count, F] on another square grid (bicubic)."""
    side_in, side_out = math.isqrt(tokens.shape[1]), math.isqrt(count)
    if side_in ** 2 != tokens.shape[1] or side_out ** 2 != count:
        raise ValueError(f"cannot resize {tokens.shape[1]} tokens to {count}: grids must be square")
    grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side_in, side_in)
    grid = F.interpolate(grid, size=(side_out, side_out), mode="bicubic", align_corners=False)
    return grid.flatten(2).transpose(1, 2)


class _View:
    """One augmentation and MNG noise draw, frozen, so the penalties' copies see exactly the
    transform the adversarial term saw. A real is passed as one latent and repeated into the
    K levels after augmentation. The first level set passed is the clean one: its last level
    (the final fake, or the reals) supplies the colour means every set and level reuses
    (`augment.color_means=official`, as the official training step). `means_grad`: whether a
    gradient reaches the clean tensor through those means too (the G step, as the official
    one) or they are constants of the draw (the D step; see `discriminator_loss`)."""

    def __init__(
        self, cfg: RunConfig, like: Tensor, generator: torch.Generator | None, draws: Draws, *, real: bool,
        means_grad: bool = True,
    ) -> None:
        batch, _, height, width = like.shape
        self.params = draws.augment(batch, height, width, cfg.augment, generator, like.device)
        self.noise = draws.noise(like, cfg.mng, generator)
        self.cfg, self.real, self.copies, self.means_grad = cfg, real, num_inputs(cfg.mng), means_grad

    def __call__(self, *level_sets: list[Tensor]) -> Tensor:
        """D's input for each set of clean levels, stacked on the batch dim in the given order.

        All sets go through one augmentation call (the draw tiled), which on small models
        costs a fraction of one call per level.
        """
        sets, levels = len(level_sets), len(level_sets[0])
        batch = level_sets[0][0].shape[0]
        # Rows ordered level-major: level k of every set is one contiguous block.
        stacked = torch.cat([s[k] for k in range(levels) for s in level_sets])
        reference = level_sets[0][-1]
        params = with_color_means(self.params, reference if self.means_grad else reference.detach())
        augmented = apply(stacked, tile(params, sets * levels)).split(sets * batch)
        if self.real:
            augmented = augmented * self.copies
        noise = [torch.cat([n] * sets) for n in self.noise]
        return perturb(list(augmented), noise, self.cfg.mng)


def score_together(critic: Critic, inputs: list[Tensor], labels: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
    """D in one forward pass over input batches stacked on the batch dim, each row block the
    size of `labels`; the logits of each block in order, and all tokens.

    D has no layer that mixes samples, so this equals one pass per block to float rounding,
    and on small models it costs one pass's overhead instead of one per block.
    """
    stacked = torch.cat(inputs)
    logits, tokens = critic(stacked, labels.repeat(stacked.shape[0] // labels.shape[0]))
    return logits.split(labels.shape[0]), tokens


def discriminator_loss(
    critic: Critic,
    reals: Tensor,
    fakes: list[Tensor],
    labels: Tensor,
    cfg: RunConfig,
    *,
    images: Tensor | None = None,
    encoder: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
    generator: torch.Generator | None = None,
    draws: Draws = SAMPLERS,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The D step's total loss and detached terms for logging.

    `fakes` are all of G's outputs (detached here); `images` are the reals in [0, 1] for the
    REPA encoder, which sees the real latent's translation and flip. REPA runs when an encoder
    is given and its weight is positive. Reals, fakes and the penalties' shifted copies are
    scored in one D pass; random draws come from `draws` in a fixed order (real view, fake view,
    ε for the reals, ε for the fakes), so a seed gives the same step however D is batched.
    """
    penalty = cfg.loss.penalty
    # The colour means are constants of the draw here, so the exact R1/R2 differentiate the very
    # map whose finite differences aR1/aR2 take (the σ → 0 limit). The official exact path would
    # differentiate through them, but never runs (its gradient_penalty gets one argument too many).
    real_view = _View(cfg, reals, generator, draws, real=True, means_grad=False)
    fake_levels = [x.detach() for x in select_levels(fakes, cfg.mng)]
    fake_view = _View(cfg, fake_levels[-1], generator, draws, real=False, means_grad=False)
    real_levels = [reals.detach()]
    if penalty == "exact":
        real_levels = [x.requires_grad_(True) for x in real_levels]
        fake_levels = [x.requires_grad_(True) for x in fake_levels]
    real_sets, fake_sets = [real_levels], [fake_levels]
    if penalty == "approx":
        sigma = cfg.loss.sigma
        real_sets.append(draws.shift(real_levels, sigma, generator))
        fake_sets.append(draws.shift(fake_levels, sigma, generator))
    # One D pass over [reals, (shifted reals), fakes, (shifted fakes)].
    logits, tokens = score_together(critic, [real_view(*real_sets), fake_view(*fake_sets)], labels)
    real_logits, fake_logits = logits[0], logits[len(real_sets)]
    adversarial = d_adversarial(real_logits, fake_logits)
    terms = {"d_adv": adversarial, "real_logits": real_logits.mean(), "fake_logits": fake_logits.mean()}
    total = adversarial

    if penalty != "none":
        if penalty == "approx":
            r1, r2 = approx_penalty(real_logits, logits[1], sigma), approx_penalty(fake_logits, logits[-1], sigma)
        else:
            r1, r2 = exact_penalty(real_logits, real_levels), exact_penalty(fake_logits, fake_levels)
        total = total + cfg.loss.gamma / 2 * (r1 + r2)
        terms.update(r1=r1, r2=r2)

    if encoder is not None and cfg.repa.weight > 0:
        if images is None:
            raise ValueError("REPA needs the real images (in [0, 1]) next to the latents")
        with torch.no_grad():
            target_cls, target_patches = encoder(apply(images, geometric_only(real_view.params)))
        repa = repa_loss(critic.project(tokens[: reals.shape[0]]), target_cls, target_patches)
        total = total + cfg.repa.weight * repa
        terms["repa"] = repa

    terms["d_total"] = total
    return total, {key: value.detach() for key, value in terms.items()}


def generator_loss(
    critic: Critic,
    reals: Tensor,
    fakes: list[Tensor],
    labels: Tensor,
    cfg: RunConfig,
    *,
    generator: torch.Generator | None = None,
    draws: Draws = SAMPLERS,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The G step's loss (relativistic, against reals scored without gradient); random draws
    come from `draws`, the fake view's first.

    Gradients also reach D's parameters unless D is frozen; the trainer freezes it and steps
    only G's optimiser.
    """
    fake_view = _View(cfg, fakes[-1], generator, draws, real=False)
    real_view = _View(cfg, reals, generator, draws, real=True)
    fake_logits, _ = critic(fake_view(select_levels(fakes, cfg.mng)), labels)
    with torch.no_grad():
        real_logits, _ = critic(real_view([reals]), labels)
    loss = g_adversarial(fake_logits, real_logits)
    return loss, {"g_adv": loss.detach(), "fake_logits": fake_logits.detach().mean()}
