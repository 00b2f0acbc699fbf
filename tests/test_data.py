"""Latent datasets: Fashion-MNIST pipeline with the committed VAE, shards, REPA layout."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gat.cache import exclusive
from contract.config import DataConfig
from contract.errors import ConfigError
from gat.data import load_dataset, load_decoder
from gat.data.fashion_mnist import DatasetMissingError, fashion_mnist_cache_dir, load_fashion_mnist, resolve_root
from gat.data.shards import ShardDataset, write_shards
from gat.data.vae import FMNIST_VAE_DIR


def write_idx(path: Path, array: np.ndarray) -> None:
    """A gzipped unsigned-byte IDX file (the format of the Debian package)."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fmnist_subset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fashion_mnist_installed: None) -> Path:
    """The first 256 real training images as an IDX folder, and a private cache."""
    images, labels = load_fashion_mnist(None, "train")
    folder = tmp_path / "fmnist"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte.gz", images[:256, 2:-2, 2:-2])
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels[:256])
    monkeypatch.setenv("GATSCALE_CACHE", str(tmp_path / "cache"))
    return folder


def test_missing_fashion_mnist_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match="apt-get install dataset-fashion-mnist"):
        resolve_root(tmp_path)
    with pytest.raises(DatasetMissingError, match="data.path"):
        load_dataset(DataConfig(kind="fashion_mnist", path=str(tmp_path)))


def test_committed_vae_is_small_and_present() -> None:
    weights = FMNIST_VAE_DIR / "diffusion_pytorch_model.safetensors"
    assert weights.is_file()
    assert weights.stat().st_size < 5 * 2**20
    assert json.loads((FMNIST_VAE_DIR / "config.json").read_text())["scaling_factor"] != 0.18215


def test_fashion_mnist_pipeline_shapes_labels_and_round_trip(fmnist_subset: Path) -> None:
    cfg = DataConfig(kind="fashion_mnist", path=str(fmnist_subset))
    data = load_dataset(cfg)
    assert (len(data), data.latent_channels, data.latent_size, data.num_classes) == (256, 4, 8, 10)
    gen = torch.Generator().manual_seed(0)
    latents, labels, images = data.batch(torch.arange(256), gen)
    assert latents.shape == (256, 4, 8, 8) and latents.dtype == torch.float32
    assert labels.dtype == torch.long and labels.min() >= 0 and labels.max() <= 9
    assert torch.equal(labels, torch.from_numpy(load_fashion_mnist(fmnist_subset)[1]))
    assert images is not None and images.shape == (256, 3, 32, 32)
    assert 0.0 <= images.min() and images.max() <= 1.0
    # scaling_factor was fitted so that scaled posterior samples have unit variance.
    assert 0.75 < float(latents.std()) < 1.33

    decoded = load_decoder(cfg)(latents[:16])
    assert decoded.shape == (16, 3, 32, 32)
    mse = float(((decoded - images[:16]) ** 2).mean())
    assert mse < 0.02, f"round-trip MSE {mse:.4f}"
    # A wrong pairing (other images) must be far worse, or the check above proves nothing.
    assert float(((decoded - images[16:32]) ** 2).mean()) > 3 * mse


def test_fashion_mnist_cache_is_reused(fmnist_subset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = DataConfig(kind="fashion_mnist", path=str(fmnist_subset))
    first = load_dataset(cfg)

    def no_encoding(*args, **kwargs):
        raise AssertionError("the cached encoding should have been reused")

    monkeypatch.setattr("gat.data.vae.load_vae", no_encoding)
    second = load_dataset(cfg)
    assert second.root == first.root and second.fingerprint == first.fingerprint


def test_a_damaged_latent_cache_is_named_and_rebuilt(fmnist_subset: Path) -> None:
    """Issue 20, defect 7 for the encoded latents: flipped bytes in a shard would fail every run
    of a sweep or train it on wrong data; the file is named and the folder encoded again."""
    cfg = DataConfig(kind="fashion_mnist", path=str(fmnist_subset))
    first = load_dataset(cfg)
    latents = first.batch(torch.arange(8), torch.Generator().manual_seed(0))[0]
    shard = next(p for p in sorted(Path(first.root).iterdir()) if p.suffix not in (".json", ".sha256"))
    raw = bytearray(shard.read_bytes())
    raw[-64:] = bytes(b ^ 0xFF for b in raw[-64:])
    shard.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=f"cache file {shard}.*rebuilding"):
        again = load_dataset(cfg)
    assert torch.equal(again.batch(torch.arange(8), torch.Generator().manual_seed(0))[0], latents)


@pytest.mark.slow
def test_concurrent_first_use_encodes_once(fmnist_subset: Path, tmp_path: Path) -> None:
    """The jobs of a first launch wait for one encoding instead of each repeating it."""
    target = fashion_mnist_cache_dir(fmnist_subset)
    script = "import sys; from gat.data.fashion_mnist import encoded_fashion_mnist as e; print(e(sys.argv[1]))"
    logs = [tmp_path / f"job{i}.stderr" for i in range(2)]
    with exclusive(target, "a first job's encoding"):  # so both jobs below must queue
        jobs = [subprocess.Popen([sys.executable, "-c", script, str(fmnist_subset)], stdout=subprocess.PIPE,
                                 stderr=log.open("w"), text=True) for log in logs]
        deadline = time.time() + 180
        while not all("waiting for another process" in log.read_text() for log in logs):
            assert time.time() < deadline and all(job.poll() is None for job in jobs), [l.read_text() for l in logs]
            time.sleep(0.2)
        assert not (target / "meta.json").exists()
    outs = [job.communicate(timeout=300)[0].strip() for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], [l.read_text() for l in logs]
    assert outs == [str(target)] * 2
    assert sum("encoding Fashion-MNIST (once)" in log.read_text() for log in logs) == 1
    assert len(ShardDataset(target)) == 256


def test_encoding_runs_on_a_fixed_thread_count(fmnist_subset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cached latents must not depend on the thread count of whichever job built them."""
    from gat.data import fashion_mnist, vae as vae_lib

    seen = []
    real_encode = vae_lib.encode_moments

    def encode(vae, images):
        seen.append(torch.get_num_threads())
        return real_encode(vae, images)

    monkeypatch.setattr(vae_lib, "encode_moments", encode)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        load_dataset(DataConfig(kind="fashion_mnist", path=str(fmnist_subset)))  # a fresh cache: encodes
        assert seen and set(seen) == {fashion_mnist.ENCODE_THREADS}
        assert torch.get_num_threads() == 1  # the job's own count is restored
    finally:
        torch.set_num_threads(before)


def test_posterior_sampling_is_seeded_and_random(fmnist_subset: Path) -> None:
    data = load_dataset(DataConfig(kind="fashion_mnist", path=str(fmnist_subset)))
    idx = torch.tensor([5, 1, 200])
    a = data.batch(idx, torch.Generator().manual_seed(1))[0]
    b = data.batch(idx, torch.Generator().manual_seed(1))[0]
    c = data.batch(idx, torch.Generator().manual_seed(2))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def write_synthetic_shards(folder: Path, n: int, shard_size: int, with_images: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(n, 4, 2, 2)).astype(np.float32)
    labels = np.arange(n) % 3
    images = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    batches = [
        (torch.from_numpy(mean[s : s + 4]), torch.zeros(len(mean[s : s + 4]), 4, 2, 2),
         torch.from_numpy(labels[s : s + 4]), images[s : s + 4] if with_images else None)
        for s in range(0, n, 4)
    ]
    write_shards(folder, batches, shard_size=shard_size, meta={"num_classes": 3, "scaling_factor": 2.0, "vae": "none"})
    return mean, images


def test_shards_gather_across_shard_boundaries(tmp_path: Path) -> None:
    mean, images = write_synthetic_shards(tmp_path, n=11, shard_size=3, with_images=True)
    assert len(json.loads((tmp_path / "meta.json").read_text())["shards"]) == 4
    data = ShardDataset(tmp_path)
    idx = torch.tensor([10, 0, 4, 3, 9, 4])
    latents, labels, got_images = data.batch(idx)
    # std is zero, so latents are exactly mean * scaling_factor.
    np.testing.assert_allclose(latents.numpy(), mean[idx.numpy()] * 2.0)
    assert labels.tolist() == [i % 3 for i in idx.tolist()]
    np.testing.assert_allclose(got_images.numpy(), images[idx.numpy()].transpose(0, 3, 1, 2) / 255.0, atol=1e-6)
    with pytest.raises(IndexError):
        data.batch(torch.tensor([11]))


def test_shards_without_images_give_none(tmp_path: Path) -> None:
    write_synthetic_shards(tmp_path, n=5, shard_size=10, with_images=False)
    assert load_dataset(DataConfig(kind="latents", path=str(tmp_path))).batch(torch.tensor([0, 4]))[2] is None


def test_latents_kind_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.path"):
        load_dataset(DataConfig(kind="latents"))
    with pytest.raises(FileNotFoundError, match="meta.json"):
        load_dataset(DataConfig(kind="latents", path=str(tmp_path)))


def make_repa_folder(root: Path, n: int = 5) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The edm2/REPA `dataset_tools.py` output: images/ + vae-sd/ with dataset.json."""
    rng = np.random.default_rng(1)
    moments = np.concatenate(
        [rng.normal(size=(n, 4, 4, 4)), np.full((n, 4, 4, 4), 0.5)], axis=1
    ).astype(np.float32)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 7, size=n)]
    entries = []
    for i in range(n):
        name = f"{i:08d}"
        (root / "images" / name[:5]).mkdir(parents=True, exist_ok=True)
        (root / "vae-sd" / name[:5]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / "images" / name[:5] / f"img{name}.png")
        np.save(root / "vae-sd" / name[:5] / f"img-mean-std-{name}.npy", moments[i])
        entries.append([f"{name[:5]}/img-mean-std-{name}.npy", labels[i]])
    (root / "vae-sd" / "dataset.json").write_text(json.dumps({"labels": entries}))
    return moments, images, labels


def test_repa_layout(tmp_path: Path) -> None:
    moments, images, labels = make_repa_folder(tmp_path)
    data = load_dataset(DataConfig(kind="repa", path=str(tmp_path)))
    assert (len(data), data.latent_channels, data.latent_size) == (5, 4, 4)
    assert data.num_classes == max(labels) + 1 and data.scaling_factor == pytest.approx(0.18215)
    idx = torch.tensor([3, 0])
    draws = data.batch(idx.repeat(300), torch.Generator().manual_seed(0))[0].view(300, 2, 4, 4, 4)
    # Posterior samples: mean * 0.18215 on average, spread std * 0.18215.
    np.testing.assert_allclose(draws.mean(0).numpy(), moments[[3, 0], :4] * 0.18215, atol=0.025)
    np.testing.assert_allclose(draws.std(0).numpy(), 0.5 * 0.18215, rtol=0.25)
    _, got_labels, got_images = data.batch(idx)
    assert got_labels.tolist() == [labels[3], labels[0]]
    np.testing.assert_allclose(got_images.numpy(), images[[3, 0]].transpose(0, 3, 1, 2) / 255.0, atol=1e-6)


def test_repa_layout_missing_label_is_an_error(tmp_path: Path) -> None:
    make_repa_folder(tmp_path, n=2)
    meta = tmp_path / "vae-sd" / "dataset.json"
    meta.write_text(json.dumps({"labels": json.loads(meta.read_text())["labels"][:1]}))
    with pytest.raises(ValueError, match="no label"):
        load_dataset(DataConfig(kind="repa", path=str(tmp_path)))

