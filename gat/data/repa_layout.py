"""The preprocessed layout of the GAT/REPA code bases (edm2-style `dataset_tools.py`).

    ROOT/images/00000/img00000000.png ...   uint8 RGB images (optional here)
    ROOT/vae-sd/00000/img-mean-std-00000000.npy ...  float [2C, h, w]: SD-VAE mean then std
    ROOT/vae-sd/dataset.json                {"labels": [["00000/img-mean-std-00000000.npy", 6], ...]}

As in those code bases, images and moments are paired by sorted file name, the moments are
unscaled and the latent scale is SD-VAE's 0.18215.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from gat.data.dataset import LatentDataset
from gat.data.vae import SD_SCALING_FACTOR

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _list_files(root: Path, extensions: tuple[str, ...]) -> list[str]:
    found = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if name.lower().endswith(extensions):
                found.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    return sorted(found)


class RepaDataset(LatentDataset):
    """A REPA-layout folder; one .npy (and one image) file per item, read on demand."""

    def __init__(self, root: str | os.PathLike, scaling_factor: float = SD_SCALING_FACTOR):
        self.root = Path(root)
        self.features_dir = self.root / "vae-sd"
        self.images_dir = self.root / "images"
        if not self.features_dir.is_dir():
            raise FileNotFoundError(f"{self.root}: no vae-sd/ folder (expected the REPA preprocessed layout)")
        self.feature_files = _list_files(self.features_dir, (".npy",))
        if not self.feature_files:
            raise FileNotFoundError(f"{self.features_dir}: no .npy moment files")
        self.image_files = _list_files(self.images_dir, IMAGE_EXTENSIONS) if self.images_dir.is_dir() else []
        if self.image_files and len(self.image_files) != len(self.feature_files):
            raise ValueError(
                f"{self.root}: {len(self.image_files)} images but {len(self.feature_files)} moment files"
            )
        self.has_images = bool(self.image_files)
        self.labels = self._read_labels()
        self.num_classes = int(self.labels.max()) + 1
        first = np.load(self.features_dir / self.feature_files[0])
        if first.ndim != 3 or first.shape[0] % 2 or first.shape[1] != first.shape[2]:
            raise ValueError(f"{self.feature_files[0]}: expected moments [2C, h, h], got {first.shape}")
        self.latent_channels, self.latent_size = first.shape[0] // 2, first.shape[1]
        self.scaling_factor = float(scaling_factor)
        digest = hashlib.sha256(str(self.root.resolve()).encode())
        digest.update(str(len(self.feature_files)).encode())
        digest.update(self.labels.tobytes())
        self.fingerprint = digest.hexdigest()[:16]

    def _read_labels(self) -> np.ndarray:
        meta = self.features_dir / "dataset.json"
        if not meta.is_file():
            raise FileNotFoundError(f"{meta} is missing (it holds the class labels)")
        entries = json.loads(meta.read_text()).get("labels")
        if entries is None:
            # dataset_tools writes null for unlabelled data: one class.
            return np.zeros(len(self.feature_files), dtype=np.int64)
        by_name = {name.replace("\\", "/"): int(label) for name, label in entries}
        missing = [name for name in self.feature_files if name not in by_name]
        if missing:
            raise ValueError(f"{meta}: no label for {missing[0]} (and {len(missing) - 1} more)")
        return np.array([by_name[name] for name in self.feature_files], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.feature_files)

    def _moments(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        moments = np.stack([np.load(self.features_dir / self.feature_files[i]) for i in idx]).astype(np.float32)
        return moments[:, : self.latent_channels], moments[:, self.latent_channels :]

    def _labels(self, idx: np.ndarray) -> np.ndarray:
        return self.labels[idx]

    def _images(self, idx: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(Image.open(self.images_dir / self.image_files[i]).convert("RGB")) for i in idx])
