"""The latent dataset the trainer samples from, independent of how the moments are stored."""
from __future__ import annotations

import numpy as np
import torch


class LatentDataset:
    """Posterior moments (mean, std) of VAE-encoded images, with labels and optional images.

    Subclasses provide `_moments`, `_labels` and `_images` for integer index arrays; `batch`
    draws fresh posterior samples on every call, as GAT does (paper §2.6).

    Attributes: `latent_channels`, `latent_size`, `num_classes`, `scaling_factor` (applied to
    the samples), `has_images`, and `fingerprint` (identifies the data for caches).
    """

    latent_channels: int
    latent_size: int
    num_classes: int
    scaling_factor: float
    has_images: bool
    fingerprint: str

    def __len__(self) -> int:
        raise NotImplementedError

    def _moments(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _labels(self, indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _images(self, indices: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, C] with C = 1 or 3 (only called when `has_images`)."""
        raise NotImplementedError

    def _check(self, indices: torch.Tensor | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for a dataset of {len(self)} items")
        return idx

    def batch(
        self, indices: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(latents [B,C,h,w] sampled from the posterior and scaled, labels [B] long,
        images [B,3,H,W] float in [0,1] or None). Everything is on CPU."""
        idx = self._check(indices)
        mean, std = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in self._moments(idx))
        noise = torch.randn(mean.shape, generator=generator)
        latents = (mean + std * noise) * self.scaling_factor
        labels = torch.from_numpy(np.ascontiguousarray(self._labels(idx), dtype=np.int64))
        images = None
        if self.has_images:
            images = uint8_to_float(torch.from_numpy(np.ascontiguousarray(self._images(idx))))
        return latents, labels, images

    def images(self, indices: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The real images [B,3,H,W] in [0,1] alone (reference statistics need no latents)."""
        if not self.has_images:
            raise ValueError("this dataset stores no images")
        return uint8_to_float(torch.from_numpy(np.ascontiguousarray(self._images(self._check(indices)))))


def uint8_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,H,W,C] (C = 1 or 3) -> float [B,3,H,W] in [0,1]."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x
