"""MNG's schedule (paper §3) as numbers: the noise strengths t_k and how many levels D sees.

Torch-free, so the planner and the analysis can size D's input and fill model.json's
`mng_noise_levels` without the trainer; `gat.mng` applies the schedule to tensors and its
docstring gives the modes' formulas.
"""
from __future__ import annotations

from contract.config import MNGConfig
from contract.errors import ConfigError

NOISY_MODES = ("exp", "lin")  # the modes that add Gaussian noise (msg resizes, off passes through)


def noise_levels(cfg: MNGConfig) -> list[float]:
    """Noise strengths t_k, shallow → deep, one per input D sees (zeros for `msg` and `off`)."""
    if cfg.mode == "off":
        return [0.0]
    if cfg.mode == "msg":
        return [0.0] * cfg.levels
    if cfg.mode not in NOISY_MODES:
        raise ConfigError(f"mng.mode={cfg.mode!r} is not one of: exp, lin, msg, off")
    if cfg.levels < 2:
        raise ConfigError(f"mng.levels must be >= 2 when mng.mode={cfg.mode}, got {cfg.levels}")
    lambdas = [k / (cfg.levels - 1) for k in range(cfg.levels)]
    if cfg.mode == "exp":
        levels = [1.0 - cfg.i_min ** (1.0 - lam) + cfg.offset for lam in lambdas]
    else:
        levels = [(1.0 - cfg.i_min) * (1.0 - lam) + cfg.offset for lam in lambdas]
    # The nesting divides by the signal 1 − t_k, and a negative t is not a noise strength.
    if not all(0.0 <= t < 1.0 for t in levels):
        raise ConfigError(
            f"mng noise levels {levels} leave [0, 1): need mng.offset >= 0 and mng.i_min > mng.offset"
        )
    return levels


def num_inputs(cfg: MNGConfig) -> int:
    """How many levels D sees (its input has `latent_channels * num_inputs(cfg)` channels)."""
    return 1 if cfg.mode == "off" else cfg.levels
