"""Frozen REPA encoders: none, tiny, TorchScript and a local torch.hub DINOv2 stand-in."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Dict

import pytest
import torch
from torch import Tensor, nn

from contract.config import RepaConfig
from contract.errors import ConfigError
from gat.encoders import IMAGENET_MEAN, FrozenEncoder, load_encoder


def _images(batch: int = 2, size: int = 48) -> Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_none_gives_no_encoder() -> None:
    assert load_encoder(RepaConfig(), "cpu") is None


def test_tiny_is_frozen_seeded_and_shaped() -> None:
    state = torch.random.get_rng_state()
    encoder = load_encoder(RepaConfig(encoder="tiny"), "cpu")
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    cls, patches = encoder(_images())
    assert cls.shape == (2, encoder.dim) and patches.shape == (2, encoder.num_patches, encoder.dim)
    assert (encoder.dim, encoder.num_patches) == (64, 256)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training
    other_cls, _ = load_encoder(RepaConfig(encoder="tiny"), "cpu")(_images())
    assert torch.equal(cls, other_cls)


class _Pool(nn.Module):
    """cls = mean pixel, patches = the pixels: makes the preprocessing visible."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.input_size = input_size

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.mean(dim=(2, 3)), x.flatten(2).transpose(1, 2)


class _DictOut(nn.Module):
    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        return {"x_norm_clstoken": x.mean(dim=(2, 3)), "x_norm_patchtokens": x.flatten(2).transpose(1, 2)}


def test_images_are_resized_and_imagenet_normalised() -> None:
    encoder = FrozenEncoder(_Pool(8), input_size=8).probe()
    grey = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(2, 3, 30, 30)
    cls, patches = encoder(grey)
    assert patches.shape == (2, 64, 3)
    torch.testing.assert_close(cls, torch.zeros(2, 3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("module", [_Pool(16), _DictOut()], ids=["tuple", "dict"])
def test_torchscript_file_loads(tmp_path: Path, module: nn.Module) -> None:
    path = tmp_path / "encoder.pt"
    torch.jit.script(module).save(str(path))
    encoder = load_encoder(RepaConfig(encoder="torchscript", source=str(path)), "cpu")
    size = 16 if isinstance(module, _Pool) else 224  # without `input_size` the DINOv2 default
    assert encoder.input_size == size
    cls, patches = encoder(_images())
    assert cls.shape == (2, 3) and patches.shape == (2, size * size, 3) and encoder.dim == 3


def test_torchscript_needs_an_existing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_encoder(RepaConfig(encoder="torchscript", source=str(tmp_path / "missing.pt")), "cpu")


def test_dinov2_from_a_local_hub_repo(tmp_path: Path) -> None:
    # A stand-in repo with DINOv2's hub entry point and output dict: nothing is downloaded.
    (tmp_path / "hubconf.py").write_text(
        "import torch\n"
        "class _Vit(torch.nn.Module):\n"
        "    def forward_features(self, x):\n"
        "        p = torch.nn.functional.avg_pool2d(x, 14).flatten(2).transpose(1, 2)\n"
        "        return {'x_norm_clstoken': p.mean(1), 'x_norm_patchtokens': p}\n"
        "def dinov2_vitb14(pretrained=True):\n"
        "    return _Vit()\n"
    )
    encoder = load_encoder(RepaConfig(encoder="dinov2", source=str(tmp_path)), "cpu")
    cls, patches = encoder(_images(size=256))
    assert cls.shape == (2, 3) and patches.shape == (2, 256, 3)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is not None, reason="transformers is installed")
def test_dinov2_hf_source_without_transformers_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(ImportError, match="pip install transformers"):
        load_encoder(RepaConfig(encoder="dinov2", source=str(tmp_path)), "cpu")
