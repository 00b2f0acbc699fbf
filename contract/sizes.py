"""Model sizes by name (DiT style): "GAT-XL/2" is one line of `MODELS`.

A size is a registry name or an explicit string "w384-d12-h6-p2". This module imports nothing
from the rest of gat, so the config can resolve `model.name` without importing the networks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from contract.errors import ConfigError


@dataclass(frozen=True)
class NetSize:
    """One transformer's shape."""

    width: int
    depth: int
    heads: int
    patch: int


MODELS: dict[str, NetSize] = {
    "GAT-S/2": NetSize(width=384, depth=12, heads=6, patch=2),
    "GAT-S/4": NetSize(width=384, depth=12, heads=6, patch=4),
    "GAT-S/8": NetSize(width=384, depth=12, heads=6, patch=8),
    "GAT-B/2": NetSize(width=768, depth=12, heads=12, patch=2),
    "GAT-B/4": NetSize(width=768, depth=12, heads=12, patch=4),
    "GAT-B/8": NetSize(width=768, depth=12, heads=12, patch=8),
    "GAT-L/2": NetSize(width=1024, depth=24, heads=16, patch=2),
    "GAT-L/4": NetSize(width=1024, depth=24, heads=16, patch=4),
    "GAT-L/8": NetSize(width=1024, depth=24, heads=16, patch=8),
    "GAT-XL/2": NetSize(width=1152, depth=28, heads=16, patch=2),
    "GAT-XL/4": NetSize(width=1152, depth=28, heads=16, patch=4),
    "GAT-XL/8": NetSize(width=1152, depth=28, heads=16, patch=8),
}

_EXPLICIT = re.compile(r"w(\d+)-d(\d+)-h(\d+)-p(\d+)")


def check_size(size: NetSize, prefix: str = "model.") -> NetSize:
    """Raise ConfigError (naming `prefix`width etc.) unless the heads split the width for 2-D RoPE."""
    for key in ("width", "depth", "heads", "patch"):
        if getattr(size, key) <= 0:
            raise ConfigError(f"{prefix}{key} must be > 0, got {getattr(size, key)}")
    if size.width % size.heads:
        raise ConfigError(f"{prefix}width={size.width} is not divisible by {prefix}heads={size.heads}")
    if (size.width // size.heads) % 4:
        raise ConfigError(
            f"{prefix}width/{prefix}heads={size.width // size.heads} must be a multiple of 4 (2-D RoPE)"
        )
    return size


def parse_size(name: str) -> NetSize:
    """A registry name or an explicit `w<width>-d<depth>-h<heads>-p<patch>` string."""
    if name in MODELS:
        return MODELS[name]
    match = _EXPLICIT.fullmatch(name)
    if match is None:
        raise ConfigError(
            f"model.name={name!r} is not one of: {', '.join(MODELS)} "
            "(or an explicit size such as w384-d12-h6-p2)"
        )
    return check_size(NetSize(*(int(group) for group in match.groups())))
