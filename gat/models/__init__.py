"""GAT's generator and discriminator, the size registry, and `describe` (model.json)."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from contract.sizes import MODELS, NetSize, parse_size

if TYPE_CHECKING:
    from gat.models.discriminator import Discriminator
    from gat.models.generator import Generator
    from contract.model_shape import describe, discriminator_size, generator_size
    from gat.models.registry import build_discriminator, build_generator

# The torch-backed names load on first use (PEP 562), so `python -m gat.models --help` does not wait
# for torch; the sizes and `describe` are the contract's torch-free ones.
_LAZY = {"Discriminator": "gat.models.discriminator", "Generator": "gat.models.generator",
         **dict.fromkeys(("build_discriminator", "build_generator"), "gat.models.registry"),
         **dict.fromkeys(("describe", "discriminator_size", "generator_size"), "contract.model_shape")}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)

__all__ = [
    "MODELS",
    "Discriminator",
    "Generator",
    "NetSize",
    "build_discriminator",
    "build_generator",
    "describe",
    "discriminator_size",
    "generator_size",
    "parse_size",
]
