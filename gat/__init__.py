"""gatscale: run and analyse scaling studies of GAT (Generative Adversarial Transformers).

The package's version is `contract.__version__`, its one home (pyproject.toml reads it there).
"""
