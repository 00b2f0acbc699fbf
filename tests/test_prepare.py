"""`python -m gat.prepare`: image folder / IDX -> shards -> `load_dataset(kind=latents)`."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contract.config import DataConfig
from gat.data import load_dataset, load_decoder
from gat.data.vae import encode_moments, load_vae
from gat.prepare import main


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight RGB AutoencoderKL (16x16 -> 4x8x8) saved with save_pretrained."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.5,
    )
    folder = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(str(folder))
    return folder


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Two classes of small PNG/JPEG images of odd sizes (so cropping and resizing run)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for cls, count in (("cat", 3), ("dog", 2)):
        (root / cls).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(20 + i, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.{'png' if i % 2 == 0 else 'jpg'}")
    return root


def run(*args: str) -> int:
    return main([*args, "--quiet"])


def test_image_folder_round_trip(tiny_vae: Path, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    assert run("--source", str(image_folder), "--vae", str(tiny_vae), "--out", str(out),
               "--resolution", "16", "--batch", "2", "--shard-size", "2") == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["class_names"] == ["cat", "dog"] and len(meta["shards"]) == 3
    assert meta["scaling_factor"] == 0.5 and meta["vae"] == str(tiny_vae.resolve())

    data = load_dataset(DataConfig(kind="latents", path=str(out)))
    assert (len(data), data.latent_channels, data.latent_size, data.num_classes) == (5, 4, 8, 2)
    latents, labels, images = data.batch(torch.arange(5), torch.Generator().manual_seed(0))
    assert latents.shape == (5, 4, 8, 8) and labels.tolist() == [0, 0, 0, 1, 1]
    assert images.shape == (5, 3, 16, 16)

    # The stored moments are the VAE's posterior for the stored image.
    mean, _ = encode_moments(load_vae(tiny_vae), (images[3:4] * 255).round().to(torch.uint8).permute(0, 2, 3, 1))
    stored = np.load(out / meta["shards"][1]["moments"])[1, :4]
    np.testing.assert_allclose(stored, mean[0].numpy(), atol=1e-4)

    decoded = load_decoder(DataConfig(kind="latents", path=str(out)))(latents)
    assert decoded.shape == (5, 3, 16, 16) and 0 <= decoded.min() and decoded.max() <= 1


def test_refuses_to_overwrite_without_force(tiny_vae: Path, image_folder: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shards"
    common = ("--source", str(image_folder), "--vae", str(tiny_vae), "--out", str(out), "--resolution", "16")
    assert run(*common) == 0
    (out / "marker").write_text("mine")
    assert run(*common) == 2
    assert "--force" in capsys.readouterr().err and (out / "marker").exists()
    assert run(*common, "--force") == 0
    assert not (out / "marker").exists() and (out / "meta.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("problem", ["missing", "empty", "unreadable"])
def test_clear_errors(problem: str, tiny_vae: Path, image_folder: Path, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    source = image_folder
    expected = {"missing": "not found", "empty": "no images", "unreadable": "cannot read image"}[problem]
    if problem == "missing":
        source = tmp_path / "nowhere"
    elif problem == "empty":
        source = tmp_path / "empty"
        source.mkdir()
    else:
        (image_folder / "dog" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert run("--source", str(source), "--vae", str(tiny_vae), "--out", str(out), "--resolution", "16") == 2
    err = capsys.readouterr().err
    assert expected in err and (problem != "unreadable" or "broken.png" in err)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_source_from_idx_files(tiny_vae: Path, tmp_path: Path) -> None:
    """Synthetic IDX files in the Debian package's format; the RGB VAE gets grey repeated."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "idx"
    folder.mkdir()
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, size=(7, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([3, 1, 4, 1, 5, 9, 2]))
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(1))
    out = tmp_path / "shards"
    assert run("--source", "fashion_mnist", "--split", "test", "--fmnist-path", str(folder),
               "--vae", str(tiny_vae), "--out", str(out), "--batch", "3") == 0
    data = load_dataset(DataConfig(kind="latents", path=str(out)))
    assert (len(data), data.num_classes, data.latent_size) == (7, 10, 16)
    latents, labels, images = data.batch(torch.arange(7))
    assert labels.tolist() == [3, 1, 4, 1, 5, 9, 2] and images.shape == (7, 3, 32, 32)
    # Zero padding 28 -> 32 keeps a black border.
    assert float(images[:, :, :2].max()) == 0.0
