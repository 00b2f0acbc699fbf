"""Encode images into gatscale latent shards (what `data.kind=latents` reads).

    python -m gat.prepare --source fashion_mnist --out data/fmnist
    python -m gat.prepare --source /data/imagenet/train --vae stabilityai/sd-vae-ft-mse \
        --out data/in256 --resolution 256

An image folder is read ImageNet-style: the class of an image is its top-level sub-folder
(sorted names give class ids; images directly in the folder form one unnamed class). Images are
centre-cropped and resized to --resolution the way ADM/REPA do. The output folder is built
under a private name and renamed into place at the end, so it is either complete or absent.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from contract import cli


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.Parser("gat.prepare", __doc__)
    parser.add_argument("--source", required=True, help="'fashion_mnist' or an image folder (class = sub-folder)")
    parser.add_argument("--vae", default=None, help="AutoencoderKL hub id or local folder (default: the committed Fashion-MNIST VAE)")
    parser.add_argument("--out", required=True, type=Path, help="the folder to write (created; must be absent or empty)")
    parser.add_argument("--resolution", type=int, default=256, help="image folders: centre-crop size (Fashion-MNIST stays 32)")
    parser.add_argument("--batch", type=int, default=64, help="images per VAE call")
    parser.add_argument("--shard-size", type=int, default=10_000, help="images per shard file")
    parser.add_argument("--split", choices=("train", "test"), default="train", help="Fashion-MNIST split")
    parser.add_argument("--fmnist-path", default=None, help="Fashion-MNIST IDX folder (default: the Debian package's)")
    parser.add_argument("--no-images", action="store_true", help="do not store the uint8 images next to the latents")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (auto: a GPU when there is one)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (it shows on a terminal only anyway)")
    args = parser.parse_args(argv)
    for name in ("resolution", "batch", "shard_size"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    return args


if __name__ == "__main__":  # --help, --version and usage errors answer before torch loads (seconds)
    parse_args(None)


import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402
from tqdm import tqdm  # noqa: E402

from contract.errors import UserError  # noqa: E402
from gat.data.fashion_mnist import CLASS_NAMES, DatasetMissingError, load_fashion_mnist  # noqa: E402
from gat.data.shards import publish, write_shards  # noqa: E402
from gat.data.vae import FMNIST_VAE_DIR, encode_moments, load_vae, weights_fingerprint  # noqa: E402

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class PrepareError(UserError, RuntimeError):
    """A user-facing problem with the inputs or the output folder."""


def list_image_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Image paths, class ids and class names of an ImageNet-style folder (sorted, deterministic)."""
    if not root.is_dir():
        raise PrepareError(f"image folder not found: {root}")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise PrepareError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    keys = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "" for p in paths]
    class_names = sorted(set(keys))
    index = {name: i for i, name in enumerate(class_names)}
    return paths, [index[k] for k in keys], class_names


def center_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM's centre crop: halve with a box filter while >= 2x too big, bicubic to the short side, crop."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.Resampling.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def read_image(path: Path, size: int) -> np.ndarray:
    """uint8 [size, size, 3]; unreadable files raise PrepareError naming the file."""
    try:
        with Image.open(path) as image:
            return center_crop(image.convert("RGB"), size)
    except (UnidentifiedImageError, OSError) as err:
        raise PrepareError(f"cannot read image {path}: {err}") from err


def folder_batches(paths: list[Path], labels: list[int], size: int, batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(uint8 images [B, size, size, 3], labels [B]) in file order."""
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        yield np.stack([read_image(p, size) for p in chunk]), np.asarray(labels[start : start + batch], dtype=np.int64)


def prepare(args: argparse.Namespace) -> dict:
    """Encode `args.source` into shards at `args.out`; returns the written meta.json content."""
    out: Path = args.out
    if out.exists() and not args.force and (not out.is_dir() or any(out.iterdir())):
        raise PrepareError(f"{out} exists and is not empty (pass --force to replace it)")
    device = cli.device(args.device)

    if args.source == "fashion_mnist":
        try:
            images, labels = load_fashion_mnist(args.fmnist_path, args.split)
        except DatasetMissingError as err:
            raise PrepareError(str(err)) from err
        total, class_names = len(images), list(CLASS_NAMES)
        batches: Iterator[tuple[np.ndarray, np.ndarray]] = (
            (images[s : s + args.batch, ..., None], labels[s : s + args.batch]) for s in range(0, total, args.batch)
        )
        source_desc = f"fashion_mnist:{args.split}"
    else:
        root = Path(args.source).expanduser()
        paths, label_list, class_names = list_image_folder(root)
        total = len(paths)
        batches = folder_batches(paths, label_list, args.resolution, args.batch)
        source_desc = str(root.resolve())

    vae_source = str(Path(args.vae).expanduser().resolve()) if Path(args.vae).expanduser().exists() else args.vae
    vae = load_vae(vae_source, device)
    bar = tqdm(total=total, desc="encoding", unit="img", disable=True if args.quiet else None)

    def encoded() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray | None]]:
        for images_np, labels_np in batches:
            mean, std = encode_moments(vae, torch.from_numpy(images_np))
            bar.update(len(labels_np))
            yield mean.cpu(), std.cpu(), torch.from_numpy(labels_np), None if args.no_images else images_np

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        meta = write_shards(
            tmp,
            encoded(),
            shard_size=args.shard_size,
            meta={
                "num_classes": len(class_names),
                "class_names": class_names,
                "scaling_factor": float(vae.config.scaling_factor),
                "vae": vae_source,
                "vae_fingerprint": weights_fingerprint(vae_source),
                "source": source_desc,
            },
        )
        publish(tmp, out, force=args.force)
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for user errors)."""
    args = parse_args(argv)
    args.vae = args.vae or str(FMNIST_VAE_DIR)

    def body() -> int:
        try:
            meta = prepare(args)
        except FileExistsError as err:
            raise PrepareError(str(err)) from err
        cli.say(
            f"wrote {meta['num_images']} latents {meta['latent_shape']} in {len(meta['shards'])} shard(s), "
            f"{meta['num_classes']} classes, scaling_factor {meta['scaling_factor']:.5g} -> {args.out}"
        )
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
