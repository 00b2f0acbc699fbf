"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (IDX files, no download).

Images are padded from 28x28 to 32x32 with the black background so the tiny VAE's three
resolutions (32, 16, 8) divide evenly.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gat.cache import cache_root, exclusive, folder_intact, seal_folder
from contract.errors import UserError
from gat.data import vae as vae_lib
from gat.data.shards import write_shards

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 32
_PAD = (IMAGE_SIZE - 28) // 2
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DatasetMissingError(UserError, FileNotFoundError):
    """The Fashion-MNIST IDX files are not where we looked."""


def _open_idx(path: Path) -> bytes:
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            opener = gzip.open if candidate.suffix == ".gz" else open
            with opener(candidate, "rb") as handle:
                return handle.read()
    raise DatasetMissingError(str(path))


def _parse_idx(raw: bytes, name: str) -> np.ndarray:
    """Decode an IDX file (big-endian header: magic with dtype code and rank, then dims)."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{name}: not an unsigned-byte IDX file")
    rank = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=rank, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{name}: truncated IDX file ({data.size} bytes for shape {tuple(dims)})")
    return data.reshape(tuple(dims))


def resolve_root(path: str | os.PathLike | None = None) -> Path:
    """The folder holding the IDX files: `path` if given, else the Debian package's folder.

    Raises DatasetMissingError with install instructions when the files are not there.
    """
    root = Path(path) if path else DEFAULT_ROOT
    images, _ = _FILES["train"]
    if not any((root / name).is_file() for name in (images, images + ".gz")):
        raise DatasetMissingError(
            f"Fashion-MNIST not found in {root}. Install it with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or set data.path to a folder "
            "holding train-images-idx3-ubyte(.gz) and train-labels-idx1-ubyte(.gz)."
        )
    return root


def load_fashion_mnist(path: str | os.PathLike | None = None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 [N, 32, 32] (zero-padded) and labels as int64 [N] for `split` train|test."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    root = resolve_root(path)
    image_name, label_name = _FILES[split]
    images = _parse_idx(_open_idx(root / image_name), image_name)
    labels = _parse_idx(_open_idx(root / label_name), label_name).astype(np.int64)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(f"{root}: unexpected Fashion-MNIST shapes {images.shape} / {labels.shape}")
    padded = np.pad(images, ((0, 0), (_PAD, _PAD), (_PAD, _PAD)))
    return padded, labels


def _data_fingerprint(root: Path) -> str:
    # The label file is small and differs between datasets with the same image count.
    labels = _open_idx(root / _FILES["train"][1])
    return hashlib.sha256(labels).hexdigest()[:8]


def fashion_mnist_cache_dir(
    path: str | os.PathLike | None = None, vae_source: str | os.PathLike | None = None
) -> Path:
    """Where `encoded_fashion_mnist` keeps Fashion-MNIST train encoded with `vae_source`.

    The name holds the VAE weights' hash and the data's, so new weights or data re-encode.
    """
    source = str(vae_source or vae_lib.FMNIST_VAE_DIR)
    return _cache_dir(resolve_root(path), vae_lib.weights_fingerprint(source))


ENCODE_THREADS = 2


def _cache_dir(root: Path, vae_key: str) -> Path:
    return cache_root() / "fashion_mnist" / f"train-{_data_fingerprint(root)}-vae-{vae_key}"


def encoded_fashion_mnist(
    path: str | os.PathLike | None = None,
    vae_source: str | os.PathLike | None = None,
    *,
    batch: int = 1000,
    progress: bool = True,
) -> Path:
    """The gatscale shard folder of Fashion-MNIST train encoded with `vae_source` (default: the
    committed tiny VAE), built on first use in `fashion_mnist_cache_dir` and reused afterwards.

    One process encodes while concurrent ones (the jobs of a first launch) wait on a file lock
    instead of repeating the work; the folder is built privately and renamed into place, so no
    reader ever sees half of it.
    """
    root = resolve_root(path)
    source = str(vae_source or vae_lib.FMNIST_VAE_DIR)
    vae_key = vae_lib.weights_fingerprint(source)
    target = _cache_dir(root, vae_key)
    # Every file is checked against its hash: damaged latents would fail every run of a sweep,
    # or worse, train them on wrong data.
    if folder_intact(target):
        return target
    with exclusive(target, "encoding Fashion-MNIST"):
        if not folder_intact(target, warn=False):  # the process we waited for may have built it
            shutil.rmtree(target, ignore_errors=True)
            _encode(root, source, vae_key, target, batch, progress)
    return target


def _encode(root: Path, source: str, vae_key: str, target: Path, batch: int, progress: bool) -> None:
    images, labels = load_fashion_mnist(root, "train")
    vae = vae_lib.load_vae(source)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    # A fixed thread count, not the job's or the machine's: the encoder's convolutions round
    # differently at some counts (3 threads differ from 1, 2 and 4 in the last bits here), and
    # the cached latents must be the same bits wherever they were built. Two, because the
    # other jobs of a first launch wait on the lock meanwhile: 150 s become 80 s on 2 cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(ENCODE_THREADS)
    try:
        image_t, label_t = torch.from_numpy(images), torch.from_numpy(labels)
        chunks = tqdm(
            range(0, len(images), batch), desc="encoding Fashion-MNIST (once)", unit="batch", disable=not progress
        )

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]]:
            for start in chunks:
                x = image_t[start : start + batch]
                mean, std = vae_lib.encode_moments(vae, x)
                yield mean, std, label_t[start : start + batch], x.numpy()[..., None]

        write_shards(
            tmp,
            batches(),
            shard_size=len(images),
            meta={
                "num_classes": NUM_CLASSES,
                "class_names": list(CLASS_NAMES),
                "scaling_factor": float(vae.config.scaling_factor),
                "vae": source,
                "vae_fingerprint": vae_key,
                "source": str(root),
            },
        )
        seal_folder(tmp)
        os.replace(tmp, target)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
