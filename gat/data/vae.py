"""AutoencoderKL helpers: the project's tiny Fashion-MNIST VAE, loading any diffusers VAE,
pixel <-> VAE-input conversion, posterior moments, and the latents -> images decoder.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

FMNIST_VAE_DIR = Path(__file__).resolve().parent.parent / "assets" / "fmnist_vae"
# The SD-VAE latent scale used by the GAT/REPA code bases (their stored moments are unscaled).
SD_SCALING_FACTOR = 0.18215


def tiny_vae_config(in_channels: int = 1, sample_size: int = 32) -> dict[str, Any]:
    """The AutoencoderKL config of the project's tiny VAE: 32x32 -> 4x8x8 (two downsamplings).

    The mid-block attention is dropped because at 8x8 it adds time but little quality.
    """
    return {
        "in_channels": in_channels,
        "out_channels": in_channels,
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 16,
        "sample_size": sample_size,
        "mid_block_add_attention": False,
    }


def load_vae(source: str | Path, device: torch.device | str = "cpu"):
    """A frozen diffusers AutoencoderKL from a local folder or a Hugging Face hub id.

    Local folders never touch the network; hub ids use the local HF cache first.
    """
    from diffusers import AutoencoderKL

    local = Path(source).expanduser()
    try:
        if local.exists():
            if not (local / "config.json").is_file():
                raise FileNotFoundError(f"{local} has no config.json (expected a save_pretrained folder)")
            vae = AutoencoderKL.from_pretrained(str(local), local_files_only=True, low_cpu_mem_usage=False)
        else:
            try:
                vae = AutoencoderKL.from_pretrained(str(source), local_files_only=True, low_cpu_mem_usage=False)
            except OSError:
                vae = AutoencoderKL.from_pretrained(str(source), low_cpu_mem_usage=False)
    except (OSError, ValueError) as err:
        raise RuntimeError(
            f"could not load the VAE {str(source)!r}: {err}. Give a local save_pretrained folder or "
            "a hub id that is in the local Hugging Face cache (or reachable online)."
        ) from err
    return vae.eval().requires_grad_(False).to(device)


def weights_fingerprint(source: str | Path) -> str:
    """A short hash identifying a VAE: of its weight files for local folders, else of the id.

    Caches keyed by it are invalidated when the committed weights change.
    """
    digest = hashlib.sha256()
    local = Path(source).expanduser()
    if local.is_dir():
        files = sorted(p for p in local.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
        if not files:
            raise FileNotFoundError(f"{local} holds no VAE weights")
        for path in files:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    else:
        digest.update(str(source).encode())
    return digest.hexdigest()[:16]


def to_vae_input(images: torch.Tensor, in_channels: int) -> torch.Tensor:
    """uint8 [B,H,W] / [B,H,W,C] or float [B,C,H,W] in [0,1] -> float [B,in_channels,H,W] in [-1,1].

    Grey images are repeated for RGB VAEs; RGB images are averaged for a grey VAE.
    """
    if images.dtype == torch.uint8:
        x = images if images.ndim == 4 else images.unsqueeze(-1)
        x = x.permute(0, 3, 1, 2).float() / 255.0
    else:
        x = images.float()
    if x.shape[1] != in_channels:
        if x.shape[1] == 1:
            x = x.expand(-1, in_channels, -1, -1)
        elif in_channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"cannot feed {x.shape[1]}-channel images to a {in_channels}-channel VAE")
    return x * 2.0 - 1.0


@torch.inference_mode()
def encode_moments(vae: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mean, std) [B, C, h, w] of `images` (any form `to_vae_input` accepts)."""
    param = next(vae.parameters())
    x = to_vae_input(images, vae.config.in_channels).to(param.device, param.dtype)
    dist = vae.encode(x).latent_dist
    return dist.mean.float(), dist.std.float()


class LatentDecoder(nn.Module):
    """Scaled latents [B,C,h,w] -> images [B,3,H,W] in [0,1] (grey VAEs repeat to 3 channels).

    Latents are moved to the VAE's device and the images returned on the latents' device,
    so the trainer can keep the decoder on CPU or move it with `.to(device)`.
    """

    def __init__(self, vae: nn.Module, scaling_factor: float):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(scaling_factor)

    @torch.inference_mode()
    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        param = next(self.vae.parameters())
        z = latents.to(param.device, param.dtype) / self.scaling_factor
        images = self.vae.decode(z).sample.float()
        images = ((images + 1.0) / 2.0).clamp(0.0, 1.0)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return images.to(latents.device)
