"""gatscale: run and analyse scaling studies of GAT (Generative Adversarial Transformers)."""

__version__ = "0.1.0"
