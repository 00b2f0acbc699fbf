"""Feature extractors and Fréchet distances."""
from __future__ import annotations

import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from contract.config import EvalConfig
from gat.data.fashion_mnist import load_fashion_mnist
from gat.data.shards import ShardDataset, write_shards
from gat.eval import dataset_stats, feature_stats, frechet_distance, load_extractor, load_ref_stats, save_stats
from gat.eval.features import fmnist_classifier_report, fmnist_input


def as_images(grey: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(grey).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)


@pytest.fixture(scope="module")
def fmnist():
    return load_extractor(EvalConfig(extractor="fmnist"), "cpu")


def test_identical_stats_give_zero() -> None:
    feats = np.random.default_rng(0).normal(size=(500, 16))
    mu, sigma = feature_stats(feats)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)


def test_diagonal_gaussians_match_closed_form() -> None:
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    a, b = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-6)


def test_general_covariances_match_scipy_sqrtm() -> None:
    rng = np.random.default_rng(3)
    mu1, s1 = feature_stats(rng.normal(size=(400, 24)) @ rng.normal(size=(24, 24)))
    mu2, s2 = feature_stats(rng.normal(size=(400, 24)) @ rng.normal(size=(24, 24)) + 0.5)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_singular_covariances_warn_once_at_stats_and_stay_exact() -> None:
    rng = np.random.default_rng(2)
    # Fewer samples than dimensions: rank-deficient covariances, as with small eval sets.
    with pytest.warns(UserWarning, match="5 samples for 32-d features"):
        mu1, s1 = feature_stats(rng.normal(size=(5, 32)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mu2, s2 = feature_stats(rng.normal(size=(5, 32)) + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no LinAlgWarning or other noise from the distance
        value = frechet_distance(mu1, s1, mu2, s2)
    # Reference: Tr((s1 s2)^(1/2)) as the sum of square roots of the product's eigenvalues,
    # computed by a different (non-symmetric) solver; only 4 of them are nonzero.
    roots = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * roots
    assert value == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_nonfinite_statistics_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN or inf"):
        frechet_distance(np.zeros(2), np.array([[np.inf, 0], [0, 1]]), np.zeros(2), np.eye(2))


def test_feature_stats_shapes_and_errors() -> None:
    mu, sigma = feature_stats(torch.randn(10, 3))
    assert mu.shape == (3,) and sigma.shape == (3, 3) and mu.dtype == np.float64
    with pytest.raises(ValueError):
        feature_stats(torch.randn(1, 3))
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_load_ref_stats_npz_forms(tmp_path: Path, fmnist) -> None:
    mu, sigma = np.arange(3.0), np.eye(3)
    save_stats(tmp_path / "ref.npz", mu, sigma)
    got_mu, got_sigma = load_ref_stats(tmp_path / "ref.npz")
    assert np.array_equal(got_mu, mu) and np.array_equal(got_sigma, sigma)

    # ADM-style reference batch: images under arr_0 (uint8 NHWC).
    images = np.random.default_rng(0).integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "adm.npz", arr_0=images)
    mu, sigma = load_ref_stats(tmp_path / "adm.npz", extractor=fmnist)
    assert mu.shape == (128,) and sigma.shape == (128, 128)
    with pytest.raises(ValueError, match="extractor"):
        load_ref_stats(tmp_path / "adm.npz")
    np.savez(tmp_path / "bad.npz", something=np.zeros(2))
    with pytest.raises(ValueError, match="mu/sigma"):
        load_ref_stats(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError):
        load_ref_stats(tmp_path / "absent.npz")


def test_none_extractor() -> None:
    assert load_extractor(EvalConfig(extractor="none"), "cpu") is None


def test_fmnist_extractor_shapes(fmnist) -> None:
    assert fmnist.dim == 128 and fmnist.name == "fmnist"
    assert fmnist(torch.rand(3, 3, 32, 32)).shape == (3, 128)
    # 28x28 crops are padded the way the data was, so they give the same features.
    images = torch.nn.functional.pad(torch.rand(2, 3, 28, 28), (2, 2, 2, 2))
    torch.testing.assert_close(fmnist(images[..., 2:-2, 2:-2]), fmnist(images))
    assert fmnist_input(torch.rand(2, 1, 64, 64)).shape == (2, 1, 32, 32)


def test_fmnist_classifier_is_trained(fashion_mnist_installed: None) -> None:
    from gat.eval.features import FMNISTExtractor

    images, labels = load_fashion_mnist(None, "test")
    net = FMNISTExtractor().net
    with torch.inference_mode():
        predictions = net(fmnist_input(as_images(images[:500]))).argmax(1)
    assert float((predictions == torch.from_numpy(labels[:500])).float().mean()) > 0.85
    assert fmnist_classifier_report()["test_accuracy"] > 0.85


def test_fmnist_distance_orders_train_test_noise(fmnist, fashion_mnist_installed: None) -> None:
    train = as_images(load_fashion_mnist(None, "train")[0][:300])
    test = as_images(load_fashion_mnist(None, "test")[0][:300])
    noise = torch.rand(300, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref = feature_stats(fmnist(train))
    fd_test = frechet_distance(*ref, *feature_stats(fmnist(test)))
    fd_noise = frechet_distance(*ref, *feature_stats(fmnist(noise)))
    assert fd_test < fd_noise / 5, (fd_test, fd_noise)


def random_image_shards(folder: Path) -> ShardDataset:
    """40 random 32x32 grey images with dummy latents: enough for reference statistics."""
    images = np.random.default_rng(0).integers(0, 256, size=(40, 32, 32, 1), dtype=np.uint8)
    folder.mkdir()
    write_shards(folder, [(torch.zeros(40, 4, 2, 2), torch.ones(40, 4, 2, 2), torch.zeros(40, dtype=torch.long), images)],
                 shard_size=64, meta={"num_classes": 1, "scaling_factor": 1.0, "vae": "none"})
    return ShardDataset(folder)


def test_dataset_stats_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmnist) -> None:
    monkeypatch.setenv("GATSCALE_CACHE", str(tmp_path / "cache"))
    data = random_image_shards(tmp_path / "shards")
    mu, sigma = dataset_stats(data, fmnist, num=30, seed=0)
    cached = list((tmp_path / "cache" / "stats").glob("*.npz"))
    assert len(cached) == 1

    def fail(*args, **kwargs):
        raise AssertionError("should have come from the cache")

    monkeypatch.setattr(data, "images", fail)
    again = dataset_stats(data, fmnist, num=30, seed=0)
    assert np.array_equal(again[0], mu) and np.array_equal(again[1], sigma)
    with pytest.raises(AssertionError, match="cache"):
        dataset_stats(data, fmnist, num=30, seed=1)


def test_a_damaged_cache_file_is_named_and_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmnist) -> None:
    """Issue 20, defect 7: flipped bytes in $GATSCALE_CACHE/stats/*.npz failed every run (BadZipFile)."""
    monkeypatch.setenv("GATSCALE_CACHE", str(tmp_path / "cache"))
    data = random_image_shards(tmp_path / "shards")
    mu, sigma = dataset_stats(data, fmnist, num=30, seed=0)
    (cached,) = (tmp_path / "cache" / "stats").glob("*.npz")
    raw = bytearray(cached.read_bytes())
    raw[10:60] = bytes(b ^ 0xFF for b in raw[10:60])
    cached.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=f"cache file {cached}.*rebuilding"):
        again = dataset_stats(data, fmnist, num=30, seed=0)
    assert np.array_equal(again[0], mu) and np.array_equal(again[1], sigma)
    assert np.array_equal(load_ref_stats(cached)[0], mu)  # the file itself was rebuilt


def test_concurrent_dataset_stats_compute_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmnist) -> None:
    """Runs of a sweep that start together share one computation of the reference statistics."""
    monkeypatch.setenv("GATSCALE_CACHE", str(tmp_path / "cache"))
    data = random_image_shards(tmp_path / "shards")
    read, real_images = [], data.images

    def slow_images(idx):
        read.append(len(idx))
        time.sleep(1.0)  # long enough for the second caller to arrive while the first computes
        return real_images(idx)

    monkeypatch.setattr(data, "images", slow_images)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: dataset_stats(data, fmnist, num=30, seed=0), range(2)))
    assert read == [30]
    assert np.array_equal(results[0][0], results[1][0]) and np.array_equal(results[0][1], results[1][1])


@pytest.mark.slow
def test_inception_extractor_offline() -> None:
    start = time.time()
    inception = load_extractor(EvalConfig(extractor="inception"), "cpu")
    feats = inception(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert inception.dim == 2048 and feats.shape == (2, 2048)
    assert torch.isfinite(feats).all() and float(feats.min()) >= 0  # pool3 follows a ReLU
    assert time.time() - start < 60
