"""Latent datasets and decoders.

`load_dataset(cfg)` gives a `LatentDataset` for `cfg.kind`:
- `fashion_mnist`: Fashion-MNIST train (Debian `dataset-fashion-mnist` or `cfg.path`), encoded
  once with the committed tiny VAE (or `cfg.vae`) and cached under `$GATSCALE_CACHE`;
- `latents`: a gatscale shard folder written by `python -m gat.prepare` (`cfg.path`);
- `repa`: the GAT/REPA preprocessed layout (`cfg.path` with `images/` and `vae-sd/`).

`load_decoder(cfg)` gives the matching latents -> images [B,3,H,W] in [0,1] decoder.
"""
from __future__ import annotations

import json
from pathlib import Path

from contract.config import DataConfig
from contract.errors import ConfigError
from gat.data.dataset import LatentDataset
from gat.data.vae import FMNIST_VAE_DIR, SD_SCALING_FACTOR, LatentDecoder, load_vae

# What the GAT/REPA code bases decode with during training.
REPA_DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"

__all__ = ["LatentDataset", "LatentDecoder", "load_dataset", "load_decoder"]


def _require_path(cfg: DataConfig) -> Path:
    if not cfg.path:
        raise ConfigError(f"data.path is required for data.kind={cfg.kind}")
    path = Path(cfg.path).expanduser()
    if not path.is_dir():
        raise ConfigError(f"data.path={cfg.path} is not a folder")
    return path


def load_dataset(cfg: DataConfig) -> LatentDataset:
    """The latent dataset `cfg` describes (see the module docstring)."""
    if cfg.kind == "fashion_mnist":
        from gat.data.fashion_mnist import encoded_fashion_mnist
        from gat.data.shards import ShardDataset

        return ShardDataset(encoded_fashion_mnist(cfg.path, cfg.vae))
    if cfg.kind == "latents":
        from gat.data.shards import ShardDataset

        return ShardDataset(_require_path(cfg))
    if cfg.kind == "repa":
        from gat.data.repa_layout import RepaDataset

        return RepaDataset(_require_path(cfg))
    raise ConfigError(f"data.kind={cfg.kind!r} is not one of: fashion_mnist, latents, repa")


def load_decoder(cfg: DataConfig) -> LatentDecoder:
    """Scaled latents -> images [B,3,H,W] in [0,1], on CPU (move it with `.to(device)`).

    The VAE is `cfg.vae` when given, else the dataset's own (the committed tiny VAE; the one
    recorded in a shard folder's meta.json; sd-vae-ft-mse for the REPA layout). The scale is the
    one the dataset applied to its latents.
    """
    if cfg.kind == "fashion_mnist":
        vae = load_vae(cfg.vae or FMNIST_VAE_DIR)
        return LatentDecoder(vae, vae.config.scaling_factor)
    if cfg.kind == "latents":
        meta = json.loads((_require_path(cfg) / "meta.json").read_text())
        return LatentDecoder(load_vae(cfg.vae or meta["vae"]), meta["scaling_factor"])
    if cfg.kind == "repa":
        return LatentDecoder(load_vae(cfg.vae or REPA_DEFAULT_VAE), SD_SCALING_FACTOR)
    raise ConfigError(f"data.kind={cfg.kind!r} is not one of: fashion_mnist, latents, repa")
