"""Frozen vision encoders that give REPA its targets (paper §2.4).

`load_encoder(cfg.repa, device)` returns a `FrozenEncoder` (or None for `none`). It takes real
images in [0, 1], resizes them bicubically to the encoder's input size, normalises them with the
ImageNet mean/std and returns (cls [B, F], patches [B, N, F]). Kinds:

- `tiny`: a small random conv encoder, seeded so every process builds the same one; for tests
  and CPU studies where no pretrained weights exist.
- `torchscript`: a scripted module at `source` whose forward returns (cls, patches) or a dict
  with `x_norm_clstoken` / `x_norm_patchtokens`; an int attribute `input_size` sets the input
  size (default 224).
- `dinov2`: DINOv2 ViT-B/14 at 224² (16×16 patches). `source` is either a local clone of the
  facebookresearch/dinov2 repo (has hubconf.py; torch.hub then reads the weights from its cache,
  `$TORCH_HOME/hub/checkpoints`) or a Hugging Face directory / hub id, read with `transformers`.

Nothing here downloads unless `source` names a hub id or the torch.hub cache lacks the weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contract.config import RepaConfig
from contract.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINOV2_HUB_MODEL = "dinov2_vitb14"
DINOV2_SIZE = 224

Backbone = Callable[[nn.Module, Tensor], Any]


def _call_module(module: nn.Module, x: Tensor) -> Any:
    return module(x)


def _call_forward_features(module: nn.Module, x: Tensor) -> Any:
    return module.forward_features(x)


class FrozenEncoder(nn.Module):
    """A frozen feature extractor: images [B, 3, H, W] in [0, 1] → (cls [B, F], patches [B, N, F]).

    Attributes: `dim` (F), `num_patches` (N), `input_size` (the side images are resized to).
    Always in eval mode, without gradients.
    """

    def __init__(self, backbone: nn.Module, input_size: int, call: Backbone = _call_module) -> None:
        super().__init__()
        self.backbone = backbone
        self.input_size = input_size
        self._call = call
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()
        self.dim = 0
        self.num_patches = 0

    def probe(self) -> FrozenEncoder:
        """Run one blank image to learn `dim` and `num_patches` (and check the output format)."""
        cls, patches = self(torch.zeros(1, 3, self.input_size, self.input_size, device=self.mean.device))
        self.dim, self.num_patches = cls.shape[-1], patches.shape[1]
        return self

    def train(self, mode: bool = True) -> FrozenEncoder:
        # A parent's .train() must not switch dropout or norm statistics back on.
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = images.float()
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False)
        return _split(self._call(self.backbone, (x - self.mean) / self.std), self.backbone)


def _split(output: Any, backbone: nn.Module) -> tuple[Tensor, Tensor]:
    """(cls, patches) from a tuple, a DINOv2 feature dict or a Hugging Face model output."""
    if isinstance(output, dict) and "x_norm_clstoken" in output and "x_norm_patchtokens" in output:
        return output["x_norm_clstoken"], output["x_norm_patchtokens"]
    if isinstance(output, (tuple, list)) and len(output) == 2:
        return output[0], output[1]
    hidden = getattr(output, "last_hidden_state", None)
    if isinstance(hidden, Tensor):
        registers = getattr(getattr(backbone, "config", None), "num_register_tokens", 0) or 0
        return hidden[:, 0], hidden[:, 1 + registers:]
    raise TypeError(
        "the encoder must return (cls, patches), a dict with x_norm_clstoken/x_norm_patchtokens "
        f"or a model output with last_hidden_state; got {type(output).__name__}"
    )


class TinyEncoder(nn.Module):
    """A random patchify-conv encoder with DINOv2-like outputs (layer-normed cls and patches)."""

    def __init__(self, dim: int = 64, patch: int = 4) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.mix = nn.Conv2d(dim, dim, kernel_size=1)
        self.cls = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        patches = self.mix(F.gelu(self.embed(x))).flatten(2).transpose(1, 2)
        cls = self.cls(patches.mean(dim=1))
        return F.layer_norm(cls, cls.shape[-1:]), F.layer_norm(patches, patches.shape[-1:])


def tiny_encoder(seed: int = 0) -> TinyEncoder:
    """The `tiny` backbone, identical in every process (its own seed, global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyEncoder()


def load_encoder(cfg: RepaConfig, device: torch.device | str) -> FrozenEncoder | None:
    """The frozen REPA encoder named by `cfg.encoder` on `device` (None for `none`)."""
    if cfg.encoder == "none":
        return None
    if cfg.encoder == "tiny":
        encoder = FrozenEncoder(tiny_encoder(), input_size=64)
    elif cfg.encoder == "torchscript":
        path = _existing(cfg.source, "torchscript")
        module = torch.jit.load(str(path), map_location="cpu")
        encoder = FrozenEncoder(module, input_size=int(getattr(module, "input_size", DINOV2_SIZE)))
    elif cfg.encoder == "dinov2":
        encoder = _dinov2(cfg.source)
    else:
        raise ConfigError(f"repa.encoder={cfg.encoder!r} is not one of: none, dinov2, torchscript, tiny")
    return encoder.to(device).probe()


def _existing(source: str | None, kind: str) -> Path:
    if not source:
        raise ConfigError(f"repa.source is required for repa.encoder={kind}")
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(f"repa.source={source} does not exist (repa.encoder={kind})")
    return path


def _dinov2(source: str | None) -> FrozenEncoder:
    """DINOv2 from a local torch.hub repo clone or a Hugging Face directory / hub id."""
    if not source:
        raise ConfigError("repa.source is required for repa.encoder=dinov2 (a local path or hub id)")
    path = Path(source).expanduser()
    if (path / "hubconf.py").is_file():
        model = torch.hub.load(str(path), DINOV2_HUB_MODEL, source="local")
        return FrozenEncoder(model, input_size=DINOV2_SIZE, call=_call_forward_features)
    try:
        from transformers import AutoModel
    except ImportError as err:
        raise ImportError(
            f"repa.source={source} is not a torch.hub repo (no hubconf.py), so it is read as a "
            "Hugging Face model, which needs transformers: pip install transformers"
        ) from err
    return FrozenEncoder(AutoModel.from_pretrained(source), input_size=DINOV2_SIZE)
