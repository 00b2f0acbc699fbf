"""The objective: loss signs, aR1 ≈ R1, REPA values, and the assembled D and G steps."""
from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from contract.config import RunConfig
from gat.encoders import load_encoder
from gat.objective import (
    approx_penalty, d_adversarial, discriminator_loss, exact_penalty, g_adversarial, generator_loss, repa_loss,
    shifted,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_loss_signs() -> None:
    zeros = torch.zeros(8)
    assert d_adversarial(zeros, zeros).item() == pytest.approx(math.log(2))
    assert d_adversarial(zeros + 1, zeros) < d_adversarial(zeros, zeros) < d_adversarial(zeros, zeros + 1)
    assert g_adversarial(zeros + 1, zeros) < g_adversarial(zeros, zeros) < g_adversarial(zeros, zeros + 1)
    real = torch.zeros(8, requires_grad=True)
    fake = torch.zeros(8, requires_grad=True)
    d_adversarial(real, fake).backward()
    assert (real.grad < 0).all() and (fake.grad > 0).all()


class _Mlp(nn.Module):
    """A fixed smooth toy D on a list of levels."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 32), nn.Tanh(), nn.Linear(32, 1)).double()

    def forward(self, levels: list[Tensor]) -> Tensor:
        return self.net(torch.cat([x.flatten(1) for x in levels], dim=1)).squeeze(1)


def _penalties(d_of, levels: list[Tensor], sigma: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(exact, approximate) penalty of `d_of` at `levels`."""
    inputs = [x.clone().requires_grad_(True) for x in levels]
    exact = exact_penalty(d_of(inputs), inputs)
    approx = approx_penalty(d_of(levels), d_of(shifted(levels, sigma, generator)), sigma)
    return exact, approx


def test_approx_penalty_matches_the_gradient_penalty() -> None:
    torch.manual_seed(0)
    d_of = _Mlp(2 * 2 * 4 * 4)
    levels = [torch.randn(8192, 2, 4, 4, dtype=torch.float64, generator=_gen(s)) for s in (1, 2)]
    exact, approx = _penalties(d_of, levels, 1e-3, _gen(3))
    assert approx.item() == pytest.approx(exact.item(), rel=0.05)
    # Trainable: both penalties reach D's weights.
    for penalty in (exact, approx):
        (grad,) = torch.autograd.grad(penalty, [d_of.net[0].weight], retain_graph=True)
        assert grad.abs().sum() > 0


def test_one_entry_repeated_shares_epsilon() -> None:
    torch.manual_seed(1)
    mlp = _Mlp(3 * 2 * 4 * 4)

    def d_of(levels: list[Tensor]) -> Tensor:
        return mlp(levels * 3)

    real = [torch.randn(8192, 2, 4, 4, dtype=torch.float64, generator=_gen(4))]
    exact, approx = _penalties(d_of, real, 1e-3, _gen(5))
    assert approx.item() == pytest.approx(exact.item(), rel=0.05)


def test_repa_loss_values() -> None:
    cls = torch.randn(4, 8, generator=_gen(6))
    patches = torch.randn(4, 16, 8, generator=_gen(7))
    same = torch.cat([cls[:, None], patches], dim=1)
    assert repa_loss(same, cls, patches).item() == pytest.approx(0.0, abs=1e-6)
    assert repa_loss(3 * same, cls, patches).item() == pytest.approx(0.0, abs=1e-6)
    cls_flipped = torch.cat([-cls[:, None], patches], dim=1)
    assert repa_loss(cls_flipped, cls, patches).item() == pytest.approx(2.0, abs=1e-6)
    assert repa_loss(-same, cls, patches).item() == pytest.approx(4.0, abs=1e-6)
    # A constant 4×4 target field resized to D's 2×2 grid stays that constant.
    field = patches[:, :1].expand(4, 16, 8)
    coarse = torch.cat([cls[:, None], field[:, :4]], dim=1)
    assert repa_loss(coarse, cls, field).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="square"):
        repa_loss(coarse, cls, field[:, :15])


class _Critic(nn.Module):
    """A smooth conv critic with D's interface: (x, y) → (logits, tokens) and project()."""

    def __init__(self, channels: int, width: int = 16, repa_dim: int = 64) -> None:
        super().__init__()
        self.patchify = nn.Conv2d(channels, width, kernel_size=2, stride=2)
        self.head = nn.Linear(width, 1)
        self.embed = nn.Embedding(10, width)
        self.projector = nn.Linear(width, repa_dim)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        patches = torch.tanh(self.patchify(x)).flatten(2).transpose(1, 2)
        tokens = torch.cat([patches.mean(1, keepdim=True) + self.embed(y)[:, None], patches], dim=1)
        return self.head(torch.tanh(tokens[:, 0])).squeeze(1), tokens

    def project(self, tokens: Tensor) -> Tensor:
        return self.projector(tokens)


def _step_inputs(cfg: RunConfig, batch: int = 8):
    torch.manual_seed(2)
    critic = _Critic(4 * (1 if cfg.mng.mode == "off" else cfg.mng.levels))
    reals = torch.randn(batch, 4, 8, 8, generator=_gen(8))
    fakes = [torch.randn(batch, 4, 8, 8, generator=_gen(9 + k), requires_grad=True) for k in range(4)]
    labels = torch.randint(0, 10, (batch,), generator=_gen(13))
    return critic, reals, fakes, labels


@pytest.mark.parametrize("mode", ["exp", "lin", "msg", "off"])
def test_d_and_g_steps_run_in_every_mode(mode: str) -> None:
    cfg = RunConfig()
    cfg.mng.mode = mode
    cfg.repa.encoder = "tiny"
    critic, reals, fakes, labels = _step_inputs(cfg)
    images = torch.rand(8, 3, 32, 32, generator=_gen(14))
    loss, terms = discriminator_loss(
        critic, reals, fakes, labels, cfg, images=images, encoder=load_encoder(cfg.repa, "cpu"), generator=_gen(15)
    )
    assert set(terms) == {"d_adv", "real_logits", "fake_logits", "r1", "r2", "repa", "d_total"}
    assert torch.isfinite(loss) and terms["r1"] > 0 and terms["r2"] > 0 and terms["repa"] > 0
    loss.backward()
    assert all(p.grad is not None for p in critic.parameters())
    assert all(f.grad is None for f in fakes)  # D's step never reaches G

    g_loss, g_terms = generator_loss(critic, reals, fakes, labels, cfg, generator=_gen(16))
    g_loss.backward()
    used = fakes[-1:] if mode == "off" else fakes
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in used)
    assert set(g_terms) == {"g_adv", "fake_logits"}


def test_d_step_holds_augmentation_and_noise_fixed_in_the_penalty(monkeypatch) -> None:
    """With aug (colour means included) and MNG noise replayed, aR1/aR2 are the exact R1/R2 up to
    the finite difference's O(σ) and the one ε draw per sample; a fresh draw would blow up by 1/σ².

    Per sample, with g = ∇_x D(view(x)) and H its Hessian (x all clean levels, ε ~ N(0, I) the
    drawn shift, view the frozen augmentation + MNG noise), Taylor gives
        (D(x + σε) − D(x))/σ = g·ε + (σ/2)·εᵀHε + O(σ²),
    so aR = mean (g·ε)² + σ·mean (g·ε)(εᵀHε) + O(σ²). Against the same-ε directional derivative
    the finite-difference error is therefore at most σ·mean |g·ε|·|εᵀHε| (the O(σ²) remainder is
    a further factor ~σ smaller); here that bound is under 1% of the penalty. Given g, g·ε ~
    N(0, ‖g‖²), so (g·ε)² = ‖g‖²·χ²₁ has mean ‖g‖² and variance 2‖g‖⁴: mean (g·ε)² estimates the
    exact R = mean ‖g‖² with standard deviation sqrt(2·Σ‖g‖⁴)/B, checked at 4 of them.
    """
    from gat import objective

    sigma = RunConfig().loss.sigma
    shifts: list[list[Tensor]] = []
    gradients: list[tuple[tuple[Tensor, ...], list[Tensor]]] = []

    def recording_shifted(levels, sigma, generator=None):
        out = shifted(levels, sigma, generator)
        shifts.append([(o - x.detach()) / sigma for o, x in zip(out, levels)])
        return out

    def recording_exact(logits, levels):
        gradients.append((torch.autograd.grad(logits.sum(), levels, create_graph=True), levels))
        return exact_penalty(logits, levels)

    draws = objective.Draws(shift=recording_shifted)
    monkeypatch.setattr(objective, "exact_penalty", recording_exact)  # a spy on a computation, not a draw
    results = {}
    for penalty in ("approx", "exact"):  # the same seed: the same augmentation and MNG draws
        cfg = RunConfig()
        cfg.loss.penalty = penalty
        critic, reals, fakes, labels = _step_inputs(cfg, batch=128)
        _, terms = discriminator_loss(critic, reals, fakes, labels, cfg, generator=_gen(17), draws=draws)
        results[penalty] = terms
    for key, eps, (grads, levels) in zip(("r1", "r2"), shifts, gradients):
        along = sum((g * e).flatten(1).sum(1) for g, e in zip(grads, eps))  # g·ε per sample
        hessian_eps = torch.autograd.grad(along.sum(), levels, retain_graph=True)  # Hε, samples being independent
        curvature = sum((h * e).flatten(1).sum(1) for h, e in zip(hessian_eps, eps))  # εᵀHε per sample
        directional = along.pow(2).mean()
        bound = sigma * (along.abs() * curvature.abs()).mean()
        assert bound < 0.01 * directional  # the setup keeps the O(σ) term small, as the maths says it is
        assert abs(results["approx"][key] - directional) <= bound, key
        norms = sum(g.pow(2).flatten(1).sum(1) for g in grads)
        assert torch.allclose(norms.mean(), results["exact"][key])
        assert abs(directional - results["exact"][key]) <= 4 * (2 * norms.pow(2).sum()).sqrt() / norms.shape[0], key
    assert results["approx"]["d_adv"].item() == pytest.approx(results["exact"]["d_adv"].item(), rel=1e-6)


def test_steps_are_deterministic_and_penalty_none_drops_terms() -> None:
    cfg = RunConfig()
    critic, reals, fakes, labels = _step_inputs(cfg)
    first = discriminator_loss(critic, reals, fakes, labels, cfg, generator=_gen(18))[0]
    again = discriminator_loss(critic, reals, fakes, labels, cfg, generator=_gen(18))[0]
    assert torch.equal(first, again)
    cfg.loss.penalty = "none"
    _, terms = discriminator_loss(critic, reals, fakes, labels, cfg, generator=_gen(18))
    assert "r1" not in terms and "repa" not in terms
    assert terms["d_total"].item() == pytest.approx(terms["d_adv"].item())
    with pytest.raises(ValueError, match="images"):
        cfg.repa.encoder = "tiny"
        discriminator_loss(critic, reals, fakes, labels, cfg, encoder=load_encoder(cfg.repa, "cpu"))
