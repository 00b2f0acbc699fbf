"""The GAT objective (paper §2), R3GAN style: relativistic pairing loss, approximate or exact
R1/R2, and REPA alignment of D's tokens on reals.

    L_D = softplus(−(D(x̃_real) − D(x̃_fake))) + γ/2·(R1 + R2) + λ_REPA·L_REPA
    L_G = softplus(−(D(x̃_fake) − D(x̃_real)))

where x̃ is DiffAugment then MNG applied to the clean latents. `discriminator_loss` and
`generator_loss` assemble one step each so the trainer only runs G, calls them and steps.
"""
from __future__ import annotations

import math
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from gat.augment import AugParams, apply, geometric_only, sample_params
from gat.config import RunConfig
from gat.mng import num_inputs, perturb, sample_noise, select_levels

LogitsOf = Callable[[list[Tensor]], Tensor]


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


def approx_penalty(
    d_of: LogitsOf,
    levels: list[Tensor],
    sigma: float,
    *,
    logits: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Finite-difference R1/R2: mean over logits of ((D(x) − D(x + σε))/σ)², ε ~ N(0, I).

    Each entry of `levels` gets its own ε (pass a real as one entry that `d_of` repeats, so its
    K copies share ε as in the official code). `d_of` must hold augmentation and MNG noise
    fixed. `logits` = d_of(levels) when the caller already has them, saving a forward pass.
    E_ε of the penalty is ‖∇_x D‖² up to O(σ²), the exact penalty.
    """
    levels = [x.detach() for x in levels]
    if logits is None:
        logits = d_of(levels)
    shifted = [
        x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) for x in levels
    ]
    return ((logits.float() - d_of(shifted).float()) / sigma).pow(2).mean()


def exact_penalty(d_of: LogitsOf, levels: list[Tensor]) -> Tensor:
    """R1/R2 by autograd: mean over samples of ‖∇_x D‖², summed over the clean levels.

    The gradient graph is kept (create_graph) so the penalty trains D.
    """
    inputs = [x.detach().requires_grad_(True) for x in levels]
    grads = torch.autograd.grad(d_of(inputs).sum(), inputs, create_graph=True)
    return sum(g.float().pow(2).flatten(1).sum(1) for g in grads).mean()


def repa_loss(projected: Tensor, target_cls: Tensor, target_patches: Tensor) -> Tensor:
    """(1 − cos) on cls plus the mean (1 − cos) over patches, averaged over the batch.

    `projected` is [B, 1+N, F] (cls first). Targets on another square grid are resized
    bicubically to D's grid, so the cls term weighs as much as all patches together.
    """
    cls, patches = projected[:, 0].float(), projected[:, 1:].float()
    target_patches = target_patches.float()
    if target_patches.shape[1] != patches.shape[1]:
        target_patches = _resize_tokens(target_patches, patches.shape[1])
    cls_term = 1.0 - F.cosine_similarity(cls, target_cls.float(), dim=-1)
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


def _scorer(
    critic: Critic, labels: Tensor, cfg: RunConfig, like: Tensor, generator: torch.Generator | None, *, real: bool
) -> tuple[Callable[[list[Tensor]], tuple[Tensor, Tensor]], AugParams]:
    """D on clean levels with one augmentation and MNG noise draw frozen (shared by penalties).

    A real is passed as one latent and repeated into the K levels after augmentation.
    """
    batch, _, height, width = like.shape
    params = sample_params(batch, height, width, cfg.augment, generator, like.device)
    noise = sample_noise(like, cfg.mng, generator)
    copies = num_inputs(cfg.mng)

    def score(levels: list[Tensor]) -> tuple[Tensor, Tensor]:
        augmented = [apply(levels[0], params)] * copies if real else [apply(x, params) for x in levels]
        return critic(perturb(augmented, noise, cfg.mng), labels)

    return score, params


def _logits_only(score: Callable[[list[Tensor]], tuple[Tensor, Tensor]]) -> LogitsOf:
    def logits_of(levels: list[Tensor]) -> Tensor:
        return score(levels)[0]

    return logits_of


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
) -> tuple[Tensor, dict[str, Tensor]]:
    """The D step's total loss and detached terms for logging.

    `fakes` are all of G's outputs (detached here); `images` are the reals in [0, 1] for the
    REPA encoder, which sees the real latent's translation and flip. REPA runs when an encoder
    is given and its weight is positive.
    """
    real_score, real_params = _scorer(critic, labels, cfg, reals, generator, real=True)
    fake_levels = [x.detach() for x in select_levels(fakes, cfg.mng)]
    fake_score, _ = _scorer(critic, labels, cfg, fake_levels[-1], generator, real=False)
    real_logits, real_tokens = real_score([reals])
    fake_logits, _ = fake_score(fake_levels)
    adversarial = d_adversarial(real_logits, fake_logits)
    terms = {"d_adv": adversarial, "real_logits": real_logits.mean(), "fake_logits": fake_logits.mean()}
    total = adversarial

    penalty = cfg.loss.penalty
    if penalty != "none":
        real_of, fake_of = _logits_only(real_score), _logits_only(fake_score)
        if penalty == "approx":
            sigma = cfg.loss.sigma
            r1 = approx_penalty(real_of, [reals], sigma, logits=real_logits, generator=generator)
            r2 = approx_penalty(fake_of, fake_levels, sigma, logits=fake_logits, generator=generator)
        else:
            r1, r2 = exact_penalty(real_of, [reals]), exact_penalty(fake_of, fake_levels)
        total = total + cfg.loss.gamma / 2 * (r1 + r2)
        terms.update(r1=r1, r2=r2)

    if encoder is not None and cfg.repa.weight > 0:
        if images is None:
            raise ValueError("REPA needs the real images (in [0, 1]) next to the latents")
        with torch.no_grad():
            target_cls, target_patches = encoder(apply(images, geometric_only(real_params)))
        repa = repa_loss(critic.project(real_tokens), target_cls, target_patches)
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
) -> tuple[Tensor, dict[str, Tensor]]:
    """The G step's loss (relativistic, against reals scored without gradient).

    Gradients also reach D's parameters; the trainer steps only G's optimiser (and zeroes D's
    gradients before the next D step).
    """
    fake_score, _ = _scorer(critic, labels, cfg, fakes[-1], generator, real=False)
    real_score, _ = _scorer(critic, labels, cfg, reals, generator, real=True)
    fake_logits, _ = fake_score(select_levels(fakes, cfg.mng))
    with torch.no_grad():
        real_logits, _ = real_score([reals])
    loss = g_adversarial(fake_logits, real_logits)
    return loss, {"g_adv": loss.detach(), "fake_logits": fake_logits.detach().mean()}
