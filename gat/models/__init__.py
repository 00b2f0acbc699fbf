"""GAT's generator and discriminator, the size registry, and `describe` (model.json)."""
from gat.models.discriminator import Discriminator
from gat.models.generator import Generator
from gat.models.registry import build_discriminator, build_generator, describe, discriminator_size, generator_size
from gat.sizes import MODELS, NetSize, parse_size

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
