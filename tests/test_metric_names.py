"""Metric names: the trainer, the table and the plots call each number what it is."""
from __future__ import annotations

import pytest

from contract.metric_names import is_metric, metric_label, metric_name, metric_rank


@pytest.mark.parametrize(("extractor", "num", "has_ref", "name", "label"), [
    ("inception", 50_000, True, "fid50k", "FID-50k"),
    ("inception", 5_000, True, "fid5k", "FID-5k"),
    ("inception", 5_000, False, "fid5k_train", "FID-5k vs training images"),
    ("inception", 1_500, True, "fid1500", "FID-1500"),
    ("fmnist", 1_000, True, "fd_fmnist", "FD (Fashion-MNIST features)"),
])
def test_names_and_labels(extractor: str, num: int, has_ref: bool, name: str, label: str) -> None:
    assert metric_name(extractor, num, has_ref) == name
    assert is_metric(name) and metric_label(name) == label


def test_unknown_extractor_and_columns() -> None:
    with pytest.raises(ValueError, match="no metric name"):
        metric_name("clip", 5000, True)
    assert not is_metric("fid") and not is_metric("loss_d") and metric_label("loss_d") == "loss_d"


def test_default_order_prefers_comparable_fid() -> None:
    names = ["fd_fmnist", "fid5k_train", "fid5k", "fid50k", "loss_x"]
    assert sorted(names, key=metric_rank) == ["fid50k", "fid5k", "fid5k_train", "fd_fmnist", "loss_x"]
