"""Latent DiffAugment: one draw shared across tensors, probabilities, geometry, gradients."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from gat import objective
from gat.augment import AugParams, apply, geometric_only, sample_params, tile, with_color_means
from contract.config import AugmentConfig, load_config
from contract.errors import ConfigError
from contract.mng import noise_levels

GEOMETRY = AugmentConfig(color_prob=0.0, cutout=0.0)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _impulses(batch: int, size: int, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    x = torch.zeros(batch, 1, size, size)
    x[torch.arange(batch), 0, ys, xs] = 1.0
    return x


def _expected(params: AugParams, ys: torch.Tensor, xs: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where DiffAugment's translation then flip should move pixel (y, x), in pixels at `size`."""
    new_y = ys + torch.round(params.shift_y * size).long()
    new_x = xs + torch.round(params.shift_x * size).long()
    new_x = torch.where(params.flip, size - 1 - new_x, new_x)
    return new_y, new_x


@pytest.mark.parametrize("size", [32, 256])
def test_geometry_moves_impulses_as_drawn_at_any_size(size: int) -> None:
    batch = 64
    params = sample_params(batch, 32, 32, GEOMETRY, _gen(1))
    scale = size // 32
    for seed in (2, 3):  # two different "levels" under the same draw
        ys = torch.randint(4 * scale, 28 * scale, (batch,), generator=_gen(seed))
        xs = torch.randint(4 * scale, 28 * scale, (batch,), generator=_gen(seed + 10))
        out = apply(_impulses(batch, size, ys, xs), params)
        new_y, new_x = _expected(params, ys, xs, size)
        assert torch.equal(out[torch.arange(batch), 0, new_y, new_x], torch.ones(batch))
        assert out.sum().item() == batch
    # Latent shifts are whole latent pixels, so an image moves by whole multiples of the scale.
    assert torch.equal(torch.round(params.shift_y * size) % scale, torch.zeros(batch))
    assert params.shift_y.abs().max().item() * 32 == 4


def test_translation_zero_fills_and_levels_share_the_draw() -> None:
    params = sample_params(256, 16, 16, AugmentConfig(), _gen(4))
    ones = torch.ones(256, 4, 16, 16)
    a, b = apply(ones, params), apply(ones.clone(), params)
    assert torch.equal(a, b)
    shifted = (params.shift_y != 0) & ~params.color_mask
    assert (a[shifted] == 0).any(dim=(1, 2, 3)).all()
    # Cutout zeroes the same square in every tensor of the batch.
    cut_only = sample_params(8, 16, 16, AugmentConfig(color_prob=0, translation=0, flip_prob=0), _gen(5))
    holes = [apply(torch.rand(8, 4, 16, 16, generator=_gen(s)) + 1, cut_only) == 0 for s in (6, 7)]
    assert torch.equal(holes[0], holes[1])
    per_sample = holes[0][:, 0].sum(dim=(1, 2))
    assert per_sample.max().item() == 64 and per_sample.min().item() > 0


def test_probabilities_match_the_policy() -> None:
    params = sample_params(20_000, 32, 32, AugmentConfig(), _gen(8))
    assert params.flip.float().mean().item() == pytest.approx(0.4, abs=0.015)
    assert params.color_mask.float().mean().item() == pytest.approx(0.5, abs=0.015)
    assert set((params.shift_x * 32).round().long().tolist()) == set(range(-4, 5))
    assert params.brightness.min() >= -0.5 and params.brightness.max() < 0.5
    assert params.saturation.min() >= 0 and params.saturation.max() < 2
    assert params.contrast.min() >= 0.5 and params.contrast.max() < 1.5


def test_colour_only_touches_the_masked_samples() -> None:
    params = sample_params(64, 8, 8, AugmentConfig(translation=0, cutout=0, flip_prob=0), _gen(9))
    x = torch.randn(64, 4, 8, 8, generator=_gen(10))
    out = apply(x, params)
    mask = params.color_mask
    assert torch.equal(out[~mask], x[~mask])
    assert ((out[mask] - x[mask]).abs().amax(dim=(1, 2, 3)) > 1e-3).all()


def test_geometric_only_keeps_translation_and_flip() -> None:
    params = sample_params(32, 32, 32, AugmentConfig(), _gen(11))
    geo = geometric_only(params)
    assert geo.color_mask is None and geo.cutout_y is None
    assert torch.equal(geo.shift_x, params.shift_x) and torch.equal(geo.flip, params.flip)
    image = torch.rand(32, 3, 64, 64, generator=_gen(12))
    out = apply(image, geo)
    inner = out[:, :, 8:-8, 8:-8]  # never reached by a ±1/8 shift's zero fill
    assert (inner > 0).all()


def test_apply_is_differentiable() -> None:
    params = sample_params(2, 4, 4, AugmentConfig(color_prob=1.0), _gen(13))
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=_gen(14), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: apply(t, params), (x,))


def test_disabled_is_identity_and_draws_are_seeded() -> None:
    x = torch.randn(4, 4, 8, 8)
    assert torch.equal(apply(x, sample_params(4, 8, 8, AugmentConfig(enabled=False))), x)
    first, again = (sample_params(16, 8, 8, AugmentConfig(), _gen(15)) for _ in range(2))
    assert all(torch.equal(getattr(first, f), getattr(again, f)) for f in ("brightness", "shift_y", "cutout_x", "flip"))
    with pytest.raises(ValueError, match="batch 16"):
        apply(x, first)


COLOUR_ONLY = AugmentConfig(color_prob=1.0, translation=0.0, cutout=0.0, flip_prob=0.0)


def _official_colour(x: torch.Tensor, params: AugParams, reference: torch.Tensor) -> torch.Tensor:
    """The official rand_brightness_saturation_contrast with the means of `reference`."""
    b, s, c = (getattr(params, name).view(-1, 1, 1, 1) for name in ("brightness", "saturation", "contrast"))
    sat_mean, con_mean = reference.mean(dim=1, keepdim=True), reference.mean(dim=(1, 2, 3), keepdim=True)
    out = ((x + b - sat_mean) * s + sat_mean - con_mean) * c + con_mean
    return torch.where(params.color_mask.view(-1, 1, 1, 1), out, x)


def test_colour_takes_its_means_from_the_input_before_brightness() -> None:
    """Official semantics: saturation and contrast centre on the means of x itself, not of x
    after brightness / after saturation (which the per-tensor DiffAugment recomputed)."""
    params = sample_params(64, 8, 8, COLOUR_ONLY, _gen(20))
    x = torch.randn(64, 4, 8, 8, generator=_gen(21), dtype=torch.float64)
    torch.testing.assert_close(apply(x, params), _official_colour(x, params, x))


def test_per_tensor_colour_means_are_the_sequential_diffaugment() -> None:
    per_tensor = sample_params(64, 8, 8, dataclasses.replace(COLOUR_ONLY, color_means="per_tensor"), _gen(20))
    official = sample_params(64, 8, 8, COLOUR_ONLY, _gen(20))
    x = torch.randn(64, 4, 8, 8, generator=_gen(21), dtype=torch.float64)
    b, s, c = (getattr(per_tensor, name).view(-1, 1, 1, 1) for name in ("brightness", "saturation", "contrast"))
    out = x + b
    out = (out - out.mean(dim=1, keepdim=True)) * s + out.mean(dim=1, keepdim=True)
    out = (out - out.mean(dim=(1, 2, 3), keepdim=True)) * c + out.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(apply(x, per_tensor), out)
    assert (apply(x, per_tensor) - apply(x, official)).abs().max() > 1e-2
    with pytest.raises(ConfigError, match="color_means"):
        load_config(None, {"augment.color_means": "per_level"})


def test_recorded_means_make_colour_one_affine_map_for_every_tensor() -> None:
    """G's other levels and the penalties' shifted copies reuse the clean tensor's means, so
    the colour op moves them all by the same per-sample affine map and a shift ε of the input
    comes out as ε·s·c; tiling repeats the recorded means with the draw."""
    params = sample_params(16, 8, 8, COLOUR_ONLY, _gen(22))
    reference = torch.randn(16, 4, 8, 8, generator=_gen(23), dtype=torch.float64, requires_grad=True)
    other = torch.randn(16, 4, 8, 8, generator=_gen(24), dtype=torch.float64)
    shared = with_color_means(params, reference)
    torch.testing.assert_close(apply(other, shared), _official_colour(other, params, reference))
    scale = (params.saturation * params.contrast).view(-1, 1, 1, 1).double()
    torch.testing.assert_close(apply(other, shared) - apply(reference, shared), (other - reference) * scale)
    stacked = apply(torch.cat([reference, other]), tile(shared, 2))
    torch.testing.assert_close(stacked, torch.cat([apply(reference, shared), apply(other, shared)]))
    # The means keep the reference's graph (the official exact R1/R2 differentiate through them).
    (grad,) = torch.autograd.grad(apply(other, shared).sum(), reference)
    assert grad.abs().max() > 0.1
    # Geometry-only copies drop the colour and its means; per-tensor draws record nothing.
    assert geometric_only(shared).saturation_mean is None
    per_tensor = sample_params(16, 8, 8, dataclasses.replace(COLOUR_ONLY, color_means="per_tensor"), _gen(22))
    assert with_color_means(per_tensor, reference) is per_tensor


def test_d_step_augments_every_level_and_copy_with_the_clean_tensors_means() -> None:
    """In discriminator_loss the reals' shifted copies use the reals' means, and every fake
    level and shifted copy uses the final clean fake's (official train step)."""
    cfg = load_config(None, {"augment.color_prob": 1.0, "augment.translation": 0.0, "augment.cutout": 0.0,
                             "augment.flip_prob": 0.0, "mng.mode": "exp", "loss.penalty": "approx"})
    seen: dict[str, list] = {"params": [], "noise": [], "shift": [], "inputs": []}

    def spy(name, function, record):
        def wrapped(*args, **kwargs):
            out = function(*args, **kwargs)
            seen[name].append(record(args, out))
            return out
        return wrapped

    defaults = objective.SAMPLERS
    draws = objective.Draws(
        augment=spy("params", defaults.augment, lambda args, out: out),
        noise=spy("noise", defaults.noise, lambda args, out: out),
        shift=spy("shift", defaults.shift, lambda args, out: [o - x.detach() for o, x in zip(out, args[0])]),
    )

    def critic(x, y):
        seen["inputs"].append(x)
        return x.flatten(1).sum(1), x.new_zeros(x.shape[0], 1, 1)

    batch, levels = 4, cfg.mng.levels
    reals = torch.randn(batch, 4, 8, 8, generator=_gen(30))
    fakes = [torch.randn(batch, 4, 8, 8, generator=_gen(31 + k)) for k in range(levels)]
    objective.discriminator_loss(critic, reals, fakes, torch.zeros(batch, dtype=torch.long), cfg, generator=_gen(40),
                                 draws=draws)
    (inputs,) = seen["inputs"]
    real_params, fake_params = seen["params"]
    (real_shift,), fake_shift = seen["shift"]
    ts = noise_levels(cfg.mng)
    blocks = inputs.split(batch)  # reals, shifted reals, fakes, shifted fakes
    for block, params, noise, clean, levels_in in (
        (blocks[0], real_params, seen["noise"][0], reals, [reals] * levels),
        (blocks[1], real_params, seen["noise"][0], reals, [reals + real_shift] * levels),
        (blocks[2], fake_params, seen["noise"][1], fakes[-1], fakes),
        (blocks[3], fake_params, seen["noise"][1], fakes[-1], [x + e for x, e in zip(fakes, fake_shift)]),
    ):
        for k, (t, n, x) in enumerate(zip(ts, noise, levels_in)):
            augmented = (block[:, 4 * k: 4 * (k + 1)] - n) / (1 - t)
            torch.testing.assert_close(augmented, _official_colour(x, params, clean), rtol=1e-4, atol=1e-5)
