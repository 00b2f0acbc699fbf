"""MNG: the noise schedule, the nested noise and the four modes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from contract.config import MNGConfig
from contract.errors import ConfigError
from contract.mng import noise_levels, num_inputs
from gat.mng import perturb, sample_noise, select_levels


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_exp_schedule_is_the_codes() -> None:
    assert noise_levels(MNGConfig()) == pytest.approx([0.885, 0.76, 0.51, 0.01], abs=1e-12)


def test_lin_schedule_is_linear_in_the_signal() -> None:
    ts = noise_levels(MNGConfig(mode="lin"))
    assert ts == pytest.approx([0.885, 0.885 - 0.875 / 3, 0.885 - 2 * 0.875 / 3, 0.01], abs=1e-12)
    signal = [1 - t for t in ts]
    steps = [b - a for a, b in zip(signal, signal[1:])]
    assert steps == pytest.approx([steps[0]] * 3)
    # Same end points as exp, more noise in the middle levels for exp.
    exp = noise_levels(MNGConfig())
    assert ts[0] == pytest.approx(exp[0]) and ts[-1] == pytest.approx(exp[-1])
    assert all(e > t for e, t in zip(exp[1:-1], ts[1:-1]))


def test_schedule_rejects_signal_at_or_below_zero() -> None:
    with pytest.raises(ConfigError, match="i_min"):
        noise_levels(MNGConfig(i_min=0.005))


def test_inputs_and_selection_per_mode() -> None:
    outputs = [torch.full((1, 4, 8, 8), float(k)) for k in range(4)]
    assert num_inputs(MNGConfig()) == 4 and num_inputs(MNGConfig(mode="msg")) == 4
    assert num_inputs(MNGConfig(mode="off")) == 1
    assert [o[0, 0, 0, 0].item() for o in select_levels(outputs, MNGConfig())] == [0, 1, 2, 3]
    assert [o[0, 0, 0, 0].item() for o in select_levels(outputs, MNGConfig(mode="off"))] == [3]
    with pytest.raises(ValueError, match="outputs"):
        select_levels(outputs[:2], MNGConfig())


def test_perturb_shape_and_deepest_level_nearly_clean() -> None:
    cfg = MNGConfig()
    x = torch.randn(3, 4, 8, 8, generator=_gen(1))
    out = perturb([x] * 4, sample_noise(x, cfg, _gen(2)), cfg)
    assert out.shape == (3, 16, 8, 8)
    assert (out[:, 12:] - x).abs().max() < 0.1
    assert (out[:, :4] - x).std() > 0.5


def test_real_copies_form_one_nested_trajectory() -> None:
    cfg = MNGConfig()
    ts = noise_levels(cfg)
    noise = sample_noise(torch.zeros(2, 4, 8, 8), cfg, _gen(3))
    a, b = (torch.randn(2, 4, 8, 8, generator=_gen(seed)) for seed in (4, 5))
    levels_a = perturb([a] * 4, noise, cfg).chunk(4, dim=1)
    levels_b = perturb([b] * 4, noise, cfg).chunk(4, dim=1)
    for k in range(3):
        ratio = (1 - ts[k]) / (1 - ts[k + 1])
        fresh_a = levels_a[k] - ratio * levels_a[k + 1]
        fresh_b = levels_b[k] - ratio * levels_b[k + 1]
        # The step from level k+1 to level k adds noise that does not depend on the image.
        torch.testing.assert_close(fresh_a, fresh_b, atol=1e-5, rtol=0)
        torch.testing.assert_close(fresh_a, noise[k] - ratio * noise[k + 1], atol=1e-5, rtol=0)


def test_noise_std_per_level_and_fresh_steps_are_independent() -> None:
    cfg = MNGConfig()
    ts = noise_levels(cfg)
    noise = sample_noise(torch.zeros(4096, 4, 8, 8), cfg, _gen(6))
    for t, n in zip(ts, noise):
        assert n.std().item() == pytest.approx(t, rel=0.01)
        assert abs(n.mean().item()) < 0.01
    for k in range(3):
        fresh = noise[k] - (1 - ts[k]) / (1 - ts[k + 1]) * noise[k + 1]
        corr = torch.corrcoef(torch.stack([fresh.flatten(), noise[k + 1].flatten()]))[0, 1]
        assert abs(corr.item()) < 0.01


def test_sampling_is_deterministic_per_seed() -> None:
    like = torch.zeros(2, 4, 4, 4)
    first, again, other = (sample_noise(like, MNGConfig(), _gen(s)) for s in (7, 7, 8))
    assert all(torch.equal(p, q) for p, q in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_msg_is_multiscale_without_noise() -> None:
    cfg = MNGConfig(mode="msg")
    x = torch.randn(2, 4, 32, 32, generator=_gen(9))
    assert sample_noise(x, cfg, _gen(0)) == []
    levels = perturb([x] * 4, [], cfg).chunk(4, dim=1)
    torch.testing.assert_close(levels[3], x)
    for k, factor in enumerate((8, 4, 2)):
        pooled = F.avg_pool2d(x, factor)
        torch.testing.assert_close(levels[k], pooled.repeat_interleave(factor, 2).repeat_interleave(factor, 3))


def test_off_sees_the_clean_final_output() -> None:
    cfg = MNGConfig(mode="off")
    x = torch.randn(2, 4, 8, 8, generator=_gen(10))
    assert noise_levels(cfg) == [0.0] and sample_noise(x, cfg) == []
    assert torch.equal(perturb([x], [], cfg), x)
    with pytest.raises(ValueError, match="expects 1 levels"):
        perturb([x, x], [], cfg)
