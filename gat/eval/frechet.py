"""Fréchet distance between Gaussians fitted to features, reference statistics, caching."""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from gat.cache import cache_root, exclusive, intact, seal
from gat.data.dataset import LatentDataset
from gat.eval.features import FeatureExtractor


def feature_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu [D], sigma [D,D]) in float64 of features [N, D] (N >= 2; unbiased covariance).

    Warns (once per call site) when N < D: sigma is then singular, and the distance is a
    biased estimate that moves with N.
    """
    x = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need features [N>=2, D], got shape {x.shape}")
    if x.shape[0] < x.shape[1]:
        warnings.warn(
            f"{x.shape[0]} samples for {x.shape[1]}-d features: the covariance is singular and the "
            "Fréchet distance is biased; use at least as many samples as feature dimensions",
            stacklevel=2,
        )
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a PSD matrix; round-off negatives are clipped to 0."""
    eigenvalues, vectors = np.linalg.eigh(sigma)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    Tr((sigma1 sigma2)^(1/2)) is the sum of square roots of the eigenvalues of the symmetric PSD
    matrix sigma1^(1/2) sigma2 sigma1^(1/2), which has the same spectrum as sigma1 sigma2. Using
    symmetric eigensolvers keeps it well defined for singular covariances (few samples, collapsed
    generators), where `scipy.linalg.sqrtm` of the non-symmetric product warns and loses accuracy.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    if not (np.isfinite(mu1).all() and np.isfinite(mu2).all() and np.isfinite(sigma1).all() and np.isfinite(sigma2).all()):
        raise ValueError("statistics contain NaN or inf")
    diff = mu1 - mu2
    root1 = _psd_sqrt((sigma1 + sigma1.T) / 2)
    product = root1 @ sigma2 @ root1
    trace_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean
    # Round-off can push identical statistics a hair below zero.
    return float(max(distance, 0.0))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def load_ref_stats(
    path: str | os.PathLike, extractor: FeatureExtractor | None = None, batch: int = 250
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from an .npz: `mu`/`sigma` keys (ours, pytorch-fid's, ADM's reference batches),
    or ADM-style images `arr_0` uint8 [N,H,W,3], whose features `extractor` then computes.

    Note ADM's stored mu/sigma come from its TF Inception, so they only pair with `inception`.
    """
    mu, sigma, _ = source_stats(path, extractor, batch=batch)
    return mu, sigma


def source_stats(
    path: str | os.PathLike, extractor: FeatureExtractor | None, *, num: int | None = None,
    batch: int = 250, progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(mu, sigma, number of images or None for stored statistics) of one of:

    - an .npz with `mu` and `sigma` (ADM reference statistics, ours, pytorch-fid's);
    - an ADM sample batch .npz: `arr_0`, uint8 [N, H, W, 3] (or 1 channel);
    - a folder of images (searched recursively, sorted by path; any size, converted to RGB).

    `num` keeps the first `num` images; `progress` shows a bar while extracting features.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise ValueError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        files = files[:num]
        images = _folder_batches(files, batch)
        count = len(files)
    elif path.is_file():
        try:
            data = np.load(path)
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path}: not a readable .npz ({err})") from err
        if not hasattr(data, "keys"):
            raise ValueError(f"{path}: expected an .npz archive, got a single array")
        try:  # members are read lazily: a truncated or CRC-damaged archive fails only here
            with data:
                if "mu" in data and "sigma" in data:
                    mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
                    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
                        raise ValueError(f"{path}: mu/sigma hold non-finite values (NaN or inf)")
                    return mu, sigma, None
                if "arr_0" not in data:
                    raise ValueError(f"{path}: expected keys mu/sigma or arr_0 (images), found {sorted(data.keys())}")
                array = data["arr_0"][:num]
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
            raise ValueError(f"{path}: damaged .npz archive ({type(err).__name__}: {err})") from err
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] not in (1, 3) or not len(array):
            raise ValueError(f"{path}: arr_0 must be uint8 [N>0,H,W,C] with C 1 or 3, got {array.dtype} {array.shape}")
        images = (array[start : start + batch] for start in range(0, len(array), batch))
        count = len(array)
    else:
        raise FileNotFoundError(f"not found: {path}")
    if extractor is None:
        raise ValueError(f"{path} holds images; pass a feature extractor to compute their statistics")
    feats = []
    # off a terminal (a log file) a line every 30 s, so a long extraction is seen to progress
    with tqdm(total=count, unit="img", desc=f"features of {path.name}", disable=not progress, leave=False,
              mininterval=0.1 if sys.stderr.isatty() else 30.0) as bar:
        for chunk in images:
            feats.append(extractor(torch.from_numpy(chunk).permute(0, 3, 1, 2).float() / 255.0))
            bar.update(len(chunk))
    mu, sigma = feature_stats(torch.cat(feats))
    return mu, sigma, count


def image_resolution(path: str | os.PathLike) -> tuple[int, int] | None:
    """(height, width) of the images `source_stats` would read from `path`, from the archive's
    header or the first image alone; None for statistics or what cannot be read (`source_stats`
    reports that)."""
    path = Path(path)
    try:
        if path.is_dir():
            from PIL import Image

            first = next((p for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES), None)
            if first is None:
                return None
            with Image.open(first) as image:
                return image.height, image.width
        with zipfile.ZipFile(path) as archive, archive.open("arr_0.npy") as member:
            version = np.lib.format.read_magic(member)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape = reader(member)[0]
            return (shape[1], shape[2]) if len(shape) == 4 else None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _folder_batches(files: list[Path], batch: int) -> Iterator[np.ndarray]:
    """uint8 [B, H, W, 3] batches of the images in `files`; a batch ends early where the size changes."""
    from PIL import Image

    pending: list[np.ndarray] = []
    for file in files:
        try:
            with Image.open(file) as image:
                array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except OSError as err:
            raise ValueError(f"{file}: not a readable image ({err})") from err
        if pending and (len(pending) == batch or pending[0].shape != array.shape):
            yield np.stack(pending)
            pending = []
        pending.append(array)
    if pending:
        yield np.stack(pending)


def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Write mu/sigma as .npz atomically (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp.npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, mu=mu, sigma=sigma)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dataset_stats(
    dataset: LatentDataset,
    extractor: FeatureExtractor,
    num: int,
    seed: int = 0,
    *,
    cache: bool = True,
    batch: int = 250,
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of `extractor` features of `num` real images drawn without replacement
    (seeded). Cached under `$GATSCALE_CACHE/stats/`, keyed by the dataset's fingerprint, the
    extractor, `num` and `seed`, so every run of a sweep shares one computation.
    """
    if not dataset.has_images:
        raise ValueError("the dataset stores no images; give eval.ref_stats instead")
    num = min(int(num), len(dataset))
    key = hashlib.sha256(f"{dataset.fingerprint}|{extractor.name}|{num}|{seed}".encode()).hexdigest()[:20]
    path = cache_root() / "stats" / f"{extractor.name}-{key}.npz"

    def compute() -> tuple[np.ndarray, np.ndarray]:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num]
        return feature_stats(torch.cat([extractor(dataset.images(idx)) for idx in order.split(batch)]))

    if not cache:
        return compute()
    # Verified on every use: one damaged file would otherwise fail every run of a sweep.
    if not intact(path):
        with exclusive(path, "computing reference statistics"):
            if not intact(path, warn=False):  # whoever we waited for may have rebuilt it
                save_stats(path, *compute())
                seal(path)
    return load_ref_stats(path)
