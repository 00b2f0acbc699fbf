"""gatscale: run and analyse scaling studies of GAT (Generative Adversarial Transformers)."""

from contract import __version__

__all__ = ["__version__"]
