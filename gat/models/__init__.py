"""GAT's generator and discriminator and their builders.

The size registry and `describe` (model.json) live in `contract.sizes` and
`contract.model_shape`, torch-free; import them from there.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gat.models.discriminator import Discriminator
    from gat.models.generator import Generator
    from gat.models.registry import build_discriminator, build_generator

# The torch-backed names load on first use (PEP 562), so `python -m gat.models --help` does not wait
# for torch.
_LAZY = {"Discriminator": "gat.models.discriminator", "Generator": "gat.models.generator",
         **dict.fromkeys(("build_discriminator", "build_generator"), "gat.models.registry")}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)

__all__ = [
    "Discriminator",
    "Generator",
    "build_discriminator",
    "build_generator",
]
