"""gatscale latent shards: a folder written by `python -m gat.prepare`.

Layout:
    meta.json              format, latent_shape [C,h,w], num_classes, class_names, scaling_factor,
                           vae (id or path), vae_fingerprint, image_shape [H,W,C] or null, shards
    moments-00000.npy      float32 [n, 2C, h, w]: posterior mean then std on channels (REPA's order)
    labels-00000.npy       int64 [n]
    images-00000.npy       uint8 [n, H, W, C] (optional; C = 1 for grey data)

Plain .npy so shards are memory-mapped: a batch reads only its rows, whatever the dataset size.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gat.data.dataset import LatentDataset

FORMAT = "gatscale-latents"
VERSION = 1


class ShardDataset(LatentDataset):
    """A gatscale shard folder, memory-mapped."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.root}: no meta.json (not a gatscale latent folder; see `python -m gat.prepare`)")
        meta_text = meta_path.read_text()
        self.meta: dict[str, Any] = json.loads(meta_text)
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {self.meta.get('format')!r}, expected {FORMAT!r}")
        channels, size, width = self.meta["latent_shape"]
        if size != width:
            raise ValueError(f"{meta_path}: latents must be square, got {size}x{width}")
        self.latent_channels, self.latent_size = int(channels), int(size)
        self.num_classes = int(self.meta["num_classes"])
        self.scaling_factor = float(self.meta["scaling_factor"])
        self.has_images = self.meta.get("image_shape") is not None
        self.fingerprint = hashlib.sha256(meta_text.encode()).hexdigest()[:16]

        def open_npy(name: str) -> np.ndarray:
            path = self.root / name
            if not path.is_file():
                raise FileNotFoundError(f"{self.root}: shard file {name} listed in meta.json is missing")
            return np.load(path, mmap_mode="r")

        shards = self.meta["shards"]
        self._moments_arrays = [open_npy(s["moments"]) for s in shards]
        self._label_arrays = [open_npy(s["labels"]) for s in shards]
        self._image_arrays = [open_npy(s["images"]) for s in shards] if self.has_images else []
        counts = [len(a) for a in self._moments_arrays]
        if counts != [s["count"] for s in shards] or counts != [len(a) for a in self._label_arrays]:
            raise ValueError(f"{self.root}: shard sizes disagree with meta.json")
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _gather(self, arrays: list[np.ndarray], idx: np.ndarray) -> np.ndarray:
        shard = np.searchsorted(self._offsets, idx, side="right") - 1
        out = np.empty((len(idx),) + arrays[0].shape[1:], dtype=arrays[0].dtype)
        for s in np.unique(shard):
            rows = np.nonzero(shard == s)[0]
            local = idx[rows] - self._offsets[s]
            # Sorted reads are sequential on disk; memmap fancy indexing copies only these rows.
            order = np.argsort(local)
            out[rows[order]] = arrays[s][local[order]]
        return out

    def _moments(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        moments = self._gather(self._moments_arrays, idx)
        return moments[:, : self.latent_channels], moments[:, self.latent_channels :]

    def _labels(self, idx: np.ndarray) -> np.ndarray:
        return self._gather(self._label_arrays, idx)

    def _images(self, idx: np.ndarray) -> np.ndarray:
        return self._gather(self._image_arrays, idx)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)


def write_shards(
    out_dir: Path,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray | None]],
    *,
    shard_size: int,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Write (mean, std, labels, uint8 images or None) batches as shards plus meta.json.

    `out_dir` must exist and be private to the caller (the caller renames it into place, which
    is what makes the output atomic). `meta` supplies num_classes, class_names, scaling_factor,
    vae, vae_fingerprint and anything else worth recording; the shapes and shard list are
    filled in here. Returns the full meta written.
    """
    if shard_size <= 0:
        raise ValueError(f"shard_size must be > 0, got {shard_size}")
    shards: list[dict[str, Any]] = []
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
    pending_count = 0
    latent_shape = image_shape = None
    stores_images: bool | None = None

    def flush(count: int) -> None:
        nonlocal pending, pending_count
        moments = np.concatenate([p[0] for p in pending])
        labels = np.concatenate([p[1] for p in pending])
        images = np.concatenate([p[2] for p in pending]) if stores_images else None
        index = len(shards)
        entry: dict[str, Any] = {"count": count, "moments": f"moments-{index:05d}.npy", "labels": f"labels-{index:05d}.npy", "images": None}
        _save_npy(out_dir / entry["moments"], moments[:count])
        _save_npy(out_dir / entry["labels"], labels[:count])
        if images is not None:
            entry["images"] = f"images-{index:05d}.npy"
            _save_npy(out_dir / entry["images"], images[:count])
        shards.append(entry)
        rest = (moments[count:], labels[count:], images[count:] if images is not None else None)
        pending = [rest] if len(rest[1]) else []
        pending_count = len(rest[1])

    for mean, std, labels, images in batches:
        moments = torch.cat([mean, std], dim=1).float().cpu().numpy()
        if latent_shape is None:
            latent_shape = list(mean.shape[1:])
            stores_images = images is not None
            image_shape = list(images.shape[1:]) if images is not None else None
        elif list(mean.shape[1:]) != latent_shape or (images is not None) != stores_images:
            raise ValueError("all batches must share one latent shape and all or none must carry images")
        if images is not None and list(images.shape[1:]) != image_shape:
            raise ValueError(f"images must share one shape: {list(images.shape[1:])} vs {image_shape}")
        pending.append((moments, labels.cpu().numpy().astype(np.int64), images))
        pending_count += len(moments)
        while pending_count >= shard_size:
            flush(shard_size)
    if pending_count:
        flush(pending_count)
    if not shards:
        raise ValueError("no images to write")
    full = {
        "format": FORMAT,
        "version": VERSION,
        "num_images": sum(s["count"] for s in shards),
        "latent_shape": latent_shape,
        "moments": "mean_std",
        "image_shape": image_shape,
        **meta,
        "shards": shards,
    }
    (out_dir / "meta.json").write_text(json.dumps(full, indent=1) + "\n")
    return full


def publish(tmp_dir: Path, out_dir: Path, *, force: bool) -> None:
    """Move a finished private folder to `out_dir` in one rename.

    An existing empty `out_dir` is replaced; a non-empty one only with `force`.
    """
    if out_dir.exists():
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        elif force:
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        else:
            raise FileExistsError(f"{out_dir} exists and is not empty (pass --force to replace it)")
    os.replace(tmp_dir, out_dir)
