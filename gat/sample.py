"""Sample a trained run's EMA generator into an ADM-style archive.

    python -m gat.sample RUN_DIR --num N --out FILE.npz [--psi 0.3] [--seed 0] [--step S]
    python -m gat.fid FILE.npz VIRTUAL_imagenet256_labeled.npz     # the paper's FID-50k at --num 50000

The archive holds `arr_0` (uint8 images [N, H, W, 3]) and `arr_1` (int64 labels [N]), the
layout the ADM evaluation suite (guided-diffusion `evaluations/evaluator.py`) reads. Labels are
uniform over the classes and z ~ N(0, I), both from a CPU generator seeded by --seed, so an
archive is reproducible on any device. `--psi` truncates toward the class mean of w; the
default 0.3 is the official generate.py's, and `--psi 0` means no truncation. Training-time
evaluation is untruncated, as in the official training loop.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Iterator

from contract import cli, rundir


def parser() -> cli.Parser:
    """The command line of `python -m gat.sample`, built before the heavy imports below."""
    parser = cli.Parser("gat.sample", __doc__)
    parser.add_argument("run_dir", type=Path, help="a run folder written by gat.train")
    parser.add_argument("--num", type=int, required=True, help="number of samples")
    parser.add_argument("--out", type=Path, required=True, help="the .npz to write (arr_0 images, arr_1 labels)")
    parser.add_argument("--psi", type=float, default=0.3,
                        help="truncation toward the class mean w; 0.3 as the official sampler, 0 = no truncation")
    parser.add_argument("--seed", type=int, default=0, help="seed of z and the labels")
    parser.add_argument("--step", type=int, default=None, help="use the step-XXXXXXX.pt snapshot instead of the newest")
    parser.add_argument("--batch", type=int, default=64, help="samples per generator call")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (auto: a GPU when there is one)")
    return parser


if __name__ == "__main__":  # --help, --version and usage errors answer before torch loads (seconds)
    parser().parse_args()


import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from gat import checkpoint  # noqa: E402
from contract.config import load_run_config  # noqa: E402
from gat.data import load_decoder  # noqa: E402
from contract.errors import UserError  # noqa: E402
from gat.models import registry  # noqa: E402


@torch.no_grad()
def generate(G: nn.Module, num: int, num_classes: int, seed: int, device: torch.device, *,
             psi: float = 0.0, batch: int = 64, labels: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (latents, labels) chunks of `num` samples from G. z and uniform labels come from a
    CPU generator seeded by `seed`, so the same seed gives the same samples on any device."""
    generator = torch.Generator().manual_seed(seed)
    if labels is None:
        labels = torch.randint(num_classes, (num,), generator=generator)
    z = torch.randn(num, G.z_dim, generator=generator)
    for start in range(0, num, batch):
        y = labels[start : start + batch].to(device)
        yield G(z[start : start + batch].to(device), y, psi=psi)[-1].float(), y


def to_uint8(images: Tensor) -> np.ndarray:
    """Images [N, 3, H, W] in [0, 1] → uint8 [N, H, W, 3] (what PNGs and ADM archives hold)."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: Tensor, columns: int = 8) -> np.ndarray:
    """Images [N, 3, H, W] in [0, 1] → one uint8 [rows·H, columns·W, 3] grid."""
    tiles = to_uint8(images)
    n, h, w, c = tiles.shape
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * h, columns * w, c), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, col = divmod(i, columns)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = tile
    return grid


def load_ema_generator(run_dir: Path, device: torch.device, step: int | None = None) -> tuple[nn.Module, dict]:
    """The run's EMA generator (newest checkpoint, or the snapshot at `step`) and its data dims."""
    config = load_run_config(run_dir)
    state = checkpoint.load_for_inference(run_dir, step)
    G = registry.build_generator(config, **state["dims"])
    G.load_state_dict(state["G_ema"])
    return G.eval().requires_grad_(False).to(device), state["dims"]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: write `--num` samples of RUN_DIR's EMA generator to `--out`."""
    command = parser()
    args = command.parse_args(argv)
    if args.num < 1 or args.batch < 1:
        command.error("--num and --batch must be at least 1")
    if not math.isfinite(args.psi):
        command.error(f"--psi must be a finite number, got {args.psi}")
    return cli.run(lambda: write_samples(args))


def write_samples(args) -> int:
    """Sample, decode and write the archive; a progress bar on a terminal."""
    if not (args.run_dir / rundir.CONFIG).is_file():
        raise UserError(f"{args.run_dir} is not a run folder (no config.yaml)")
    device = cli.device(args.device)
    G, dims = load_ema_generator(args.run_dir, device, args.step)
    decoder = load_decoder(load_run_config(args.run_dir).data).to(device)
    images, labels = [], []
    chunks = generate(G, args.num, dims["num_classes"], args.seed, device, psi=args.psi, batch=args.batch)
    with tqdm(total=args.num, unit="img", desc="sampling", disable=None) as bar:
        for latents, y in chunks:
            images.append(to_uint8(decoder(latents)))
            labels.append(y.cpu().numpy())
            bar.update(len(y))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, arr_0=np.concatenate(images), arr_1=np.concatenate(labels).astype(np.int64))
    cli.say(f"wrote {args.num} samples to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
