"""What each evaluation metric is called, so stats.jsonl, the tidy table and the plots agree.

- ``fid50k``, ``fid5k``, ...: Inception FID of N generated images against reference statistics
  (ADM's ``VIRTUAL_imagenet256_labeled.npz`` for ImageNet-256). Comparable with papers when the
  reference is theirs and N is 50k.
- ``fid5k_train``: the same network and N, but against N training images because no reference
  statistics were given. Not comparable with published FID.
- ``fd_fmnist``: Fréchet distance in a small Fashion-MNIST classifier's features. Not FID.

Pure Python, so the analysis can use it without importing torch.
"""
from __future__ import annotations

import re

FD_FMNIST = "fd_fmnist"
_FID = re.compile(r"^fid(?P<count>\d+(?:\.\d+)?k|\d+)(?P<train>_train)?$")


def _count(num_samples: int) -> str:
    return f"{num_samples // 1000}k" if num_samples % 1000 == 0 else str(num_samples)


def metric_name(extractor: str, num_samples: int, has_ref_stats: bool) -> str:
    """The stats.jsonl key of an evaluation with `extractor` on `num_samples` generated images."""
    if extractor == "fmnist":
        return FD_FMNIST
    if extractor == "inception":
        return f"fid{_count(num_samples)}" + ("" if has_ref_stats else "_train")
    raise ValueError(f"no metric name for extractor {extractor!r}")


def _fid_samples(match: re.Match) -> float:
    count = match["count"]
    return float(count[:-1]) * 1000 if count.endswith("k") else float(count)


def is_metric(name: str) -> bool:
    """Whether a column name is one of the metrics above."""
    return name == FD_FMNIST or _FID.match(name) is not None


def metric_rank(name: str) -> tuple[int, float, str]:
    """Sort key for picking a default metric: FID against reference statistics first (more
    samples first), then FID against training images, then ``fd_fmnist``, then anything else."""
    match = _FID.match(name)
    if match:
        return (1 if match["train"] else 0), -_fid_samples(match), name
    return (2 if name == FD_FMNIST else 3), 0.0, name


def metric_label(name: str) -> str:
    """A plot label that says what the number is, e.g. "FID-50k" or "FID-5k vs training images"."""
    match = _FID.match(name)
    if match:
        return f"FID-{match['count']}" + (" vs training images" if match["train"] else "")
    if name == FD_FMNIST:
        return "FD (Fashion-MNIST features)"
    return name
