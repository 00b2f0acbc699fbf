"""Latent DiffAugment (paper §2.5): colour, translation, cutout, flip, in that order.

Parameters are drawn once per batch (`sample_params`) and applied by `apply`, so every tensor of
that batch gets the same transform: all K fake levels share the final fake's parameters, the
penalties replay the adversarial term's augmentation, and the REPA encoder's image sees the
real latent's translation and flip (`geometric_only`). Geometry is stored as fractions of the
size, so one draw fits a 32² latent and a 256² image alike. Every op is differentiable in x.

Colour (`augment.color_means`): brightness, saturation and contrast act together as in the
official GAT code (losses/diffaug.py, rand_brightness_saturation_contrast):

    u = x + b,    u = (u − m_s)·s + m_s,    x' = (u − m_c)·c + m_c     (on the masked samples)

with the saturation mean m_s (per pixel, over channels) and the contrast mean m_c (per sample)
taken from one reference tensor before any colour op. `official` (the default): the reference
is the clean tensor the draw belongs to, the final fake or the reals, and every other tensor
augmented with that draw (G's intermediate levels, the penalties' shifted copies) reuses its
means, as the official training step does by passing the stored parameters on; the colour op is
then one affine map per sample. `with_color_means` records the means; a draw without recorded
means takes them from the tensor it is applied to. `per_tensor`: the original DiffAugment's
sequential ops, each mean recomputed from the tensor as it stands (saturation after brightness,
contrast after saturation), so `apply` is one fixed function of each tensor.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from contract.config import AugmentConfig


@dataclass(frozen=True)
class AugParams:
    """One batch's augmentation draw; a None field means that op is skipped."""

    batch: int
    color_mask: Tensor | None = None  # bool [B]: which samples get the colour ops
    brightness: Tensor | None = None  # [B] offset in [−0.5, 0.5)
    saturation: Tensor | None = None  # [B] factor in [0, 2)
    contrast: Tensor | None = None  # [B] factor in [0.5, 1.5)
    shift_y: Tensor | None = None  # [B] translation as a fraction of the height
    shift_x: Tensor | None = None  # [B] translation as a fraction of the width
    cutout_y: Tensor | None = None  # [B] square centre as a fraction of the height
    cutout_x: Tensor | None = None  # [B] square centre as a fraction of the width
    cutout_size: float = 0.0  # square side as a fraction of the size
    flip: Tensor | None = None  # bool [B]: horizontal flip
    saturation_mean: Tensor | None = None  # [B, 1, H, W]: the reference tensor's channel mean
    contrast_mean: Tensor | None = None  # [B, 1, 1, 1]: the reference tensor's per-sample mean
    per_tensor_means: bool = False  # augment.color_means=per_tensor: recompute means per tensor


def sample_params(
    batch: int,
    height: int,
    width: int,
    cfg: AugmentConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> AugParams:
    """Draw one batch's parameters at size height×width (identity when `cfg.enabled` is False)."""
    if not cfg.enabled:
        return AugParams(batch=batch)

    def uniform() -> Tensor:
        return torch.rand(batch, generator=generator, device=device)

    def integers(low: int, high: int) -> Tensor:
        return torch.randint(low, high + 1, (batch,), generator=generator, device=device).float()

    fields: dict[str, Any] = {}
    if cfg.color_prob > 0:
        fields.update(
            color_mask=uniform() < cfg.color_prob,
            brightness=uniform() - 0.5,
            saturation=uniform() * 2.0,
            contrast=uniform() + 0.5,
        )
    if cfg.translation > 0:
        # Whole latent pixels at the sampling size, as DiffAugment shifts by integers.
        max_y, max_x = int(height * cfg.translation + 0.5), int(width * cfg.translation + 0.5)
        fields.update(shift_y=integers(-max_y, max_y) / height, shift_x=integers(-max_x, max_x) / width)
    if cfg.cutout > 0:
        fields.update(
            cutout_y=integers(0, height) / height,
            cutout_x=integers(0, width) / width,
            cutout_size=cfg.cutout,
        )
    if cfg.flip_prob > 0:
        fields.update(flip=uniform() < cfg.flip_prob)
    if cfg.color_means not in COLOR_MEANS:
        raise ValueError(f"augment.color_means={cfg.color_means!r} is not one of: {', '.join(COLOR_MEANS)}")
    return AugParams(batch=batch, per_tensor_means=cfg.color_means == "per_tensor", **fields)


COLOR_MEANS = ("official", "per_tensor")


def with_color_means(params: AugParams, reference: Tensor) -> AugParams:
    """The draw with the colour means of `reference` [B, C, H, W] recorded, for `official` means.

    Every tensor later augmented with the result uses these means instead of its own. The means
    keep `reference`'s graph, so a gradient through the augmented tensors also reaches it through
    them (the official G step's does); pass `reference.detach()` to make them constants of the
    draw. A no-op without colour or for `per_tensor` means.
    """
    if params.color_mask is None or params.per_tensor_means:
        return params
    if reference.shape[0] != params.batch:
        raise ValueError(f"augmentation parameters are for batch {params.batch}, got {reference.shape[0]}")
    return dataclasses.replace(
        params,
        saturation_mean=reference.mean(dim=1, keepdim=True),
        contrast_mean=reference.mean(dim=(1, 2, 3), keepdim=True),
    )


def geometric_only(params: AugParams) -> AugParams:
    """The same draw with only translation and flip (for the REPA encoder's image input)."""
    return dataclasses.replace(
        params, color_mask=None, brightness=None, saturation=None, contrast=None,
        saturation_mean=None, contrast_mean=None, cutout_y=None, cutout_x=None, cutout_size=0.0,
    )


def tile(params: AugParams, times: int) -> AugParams:
    """The draw for `times` batches stacked on the batch dim, each transformed as the original."""
    if times == 1:
        return params
    fields = {
        field.name: value.repeat(times, *[1] * (value.dim() - 1))
        for field in dataclasses.fields(params)
        if isinstance(value := getattr(params, field.name), Tensor)
    }
    return dataclasses.replace(params, batch=params.batch * times, **fields)


def apply(x: Tensor, params: AugParams) -> Tensor:
    """Augment x [B, C, H, W] (any C, H, W) with one batch's parameters."""
    if x.shape[0] != params.batch:
        raise ValueError(f"augmentation parameters are for batch {params.batch}, got {x.shape[0]}")
    if params.color_mask is not None:
        x = _color(x, params)
    if params.shift_y is not None and params.shift_x is not None:
        x = _translate(x, params.shift_y, params.shift_x)
    if params.cutout_y is not None and params.cutout_x is not None:
        x = _cutout(x, params.cutout_y, params.cutout_x, params.cutout_size)
    if params.flip is not None:
        x = torch.where(_per_sample(params.flip, x), x.flip(3), x)
    return x


def _per_sample(values: Tensor, x: Tensor) -> Tensor:
    return values.to(x.device).view(-1, 1, 1, 1)


def _color(x: Tensor, params: AugParams) -> Tensor:
    """Brightness, saturation and contrast together on the masked samples (module docstring)."""
    out = x + _per_sample(params.brightness, x).to(x.dtype)
    if params.per_tensor_means:
        saturation_mean = out.mean(dim=1, keepdim=True)
    elif params.saturation_mean is not None:
        saturation_mean = params.saturation_mean.to(x.dtype)
    else:
        saturation_mean = x.mean(dim=1, keepdim=True)
    out = (out - saturation_mean) * _per_sample(params.saturation, x).to(x.dtype) + saturation_mean
    if params.per_tensor_means:
        contrast_mean = out.mean(dim=(1, 2, 3), keepdim=True)
    elif params.contrast_mean is not None:
        contrast_mean = params.contrast_mean.to(x.dtype)
    else:
        contrast_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - contrast_mean) * _per_sample(params.contrast, x).to(x.dtype) + contrast_mean
    return torch.where(_per_sample(params.color_mask, x), out, x)


def _translate(x: Tensor, shift_y: Tensor, shift_x: Tensor) -> Tensor:
    """Shift each sample by whole pixels (down/right for positive), zero-filling the gap."""
    x = _shift_axis(x, shift_y, x.shape[2], dim=2)
    return _shift_axis(x, shift_x, x.shape[3], dim=3)


def _shift_axis(x: Tensor, shift: Tensor, size: int, dim: int) -> Tensor:
    pixels = torch.round(shift.to(x.device) * size).long().view(-1, 1)
    source = torch.arange(size, device=x.device).view(1, -1) - pixels  # [B, size]
    valid = (source >= 0) & (source < size)
    shape = [x.shape[0], 1, 1, 1]
    shape[dim] = size
    index = source.clamp(0, size - 1).view(shape).expand_as(x)
    return torch.gather(x, dim, index) * valid.view(shape).to(x.dtype)


def _cutout(x: Tensor, centre_y: Tensor, centre_x: Tensor, fraction: float) -> Tensor:
    """Zero one square of side `fraction`·size per sample (clipped at the borders)."""
    height, width = x.shape[-2:]
    inside_y = _span(centre_y, height, int(height * fraction + 0.5), x.device)
    inside_x = _span(centre_x, width, int(width * fraction + 0.5), x.device)
    hole = inside_y.unsqueeze(2) & inside_x.unsqueeze(1)  # [B, H, W]
    return x * (~hole).unsqueeze(1).to(x.dtype)


def _span(centre: Tensor, size: int, length: int, device: torch.device) -> Tensor:
    start = torch.round(centre.to(device) * size).long().view(-1, 1) - length // 2
    positions = torch.arange(size, device=device).view(1, -1)
    return (positions >= start) & (positions < start + length)
