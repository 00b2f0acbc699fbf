"""μP-style coordinate check for G and D: activation size per module vs width, per LR rule.

    python -m gat.coord_check --widths 32 64 128 --rules constant width_aware mup --steps 5 --out DIR

For every width, LR rule and seed this builds the run's G and D exactly as the trainer does
(same parameter groups, same AdamW), trains them `--steps` iterations with the real objective
(`gat.step.train_step`: relativistic loss, aR1/aR2, MNG, DiffAugment) on tiny latents, and after
each step measures the RMS of every module's output on a fixed probe batch (G on fixed (z, y),
D on fixed reals with fixed MNG noise; `gat.diagnostics.make_probe`). Step 0 is the
initialisation.

Reading it (microsoft/mup's coord check): under a rule that transfers, each module's curve is
flat in width after a few steps; under the naive constant LR the updates, and so the
activations, grow with width. The head dimension is held fixed (`--head-dim`), so wider models
have more heads, as in the GAT registry. A large `--base-lr` makes the differences visible
within a few steps.

Writes DIR/coord_check.csv with columns net, module, width, rule, seed, step, rms.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Iterator

from contract import cli
from contract.lr_rules import RULES


def parser() -> cli.Parser:
    """The command line of `python -m gat.coord_check`, built before the heavy imports below."""
    parser = cli.Parser("gat.coord_check", __doc__)
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128], help="model widths to compare")
    parser.add_argument("--rules", nargs="+", default=list(RULES), help=f"LR rules ({', '.join(RULES)})")
    parser.add_argument("--steps", type=int, default=5, help="training steps after init")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one set of runs per seed")
    parser.add_argument("--data", choices=("random", "fmnist"), default="random",
                        help="random latents (no VAE needed) or the Fashion-MNIST latents")
    parser.add_argument("--base-lr", type=float, default=2e-3, help="large on purpose: differences show in a few steps")
    parser.add_argument("--base-width", type=int, help="width where every rule gives --base-lr (default: the smallest)")
    parser.add_argument("--head-dim", type=int, default=16, help="channels per head (heads = width / head dim)")
    parser.add_argument("--depth", type=int, default=2, help="transformer blocks in G and D")
    parser.add_argument("--batch", type=int, default=16, help="training batch")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write coord_check.csv into")
    return parser


if __name__ == "__main__":  # --help, --version and usage errors answer before torch loads (seconds)
    parser().parse_args()


import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from gat import diagnostics  # noqa: E402
from contract.config import DataConfig, RunConfig, from_dict  # noqa: E402
from contract.errors import ConfigError  # noqa: E402
from gat.data import load_dataset  # noqa: E402
from gat.data.dataset import LatentDataset  # noqa: E402
from gat.step import Iterations, build_nets, data_dims  # noqa: E402

COLUMNS = ("net", "module", "width", "rule", "seed", "step", "rms")


class RandomLatents(LatentDataset):
    """A fixed set of random latent posteriors [size, 4, 8, 8] with 10 classes: enough data for
    a coordinate check without any VAE or download."""

    latent_channels, latent_size, num_classes = 4, 8, 10
    scaling_factor, has_images, fingerprint = 1.0, False, "coord-check-random"

    def __init__(self, size: int = 256, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.mean = torch.randn(size, 4, 8, 8, generator=generator).numpy()
        self.std = np.full_like(self.mean, 0.1)
        self.labels = np.arange(size) % self.num_classes

    def __len__(self) -> int:
        return len(self.mean)

    def _moments(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.mean[indices], self.std[indices]

    def _labels(self, indices: np.ndarray) -> np.ndarray:
        return self.labels[indices]


def check_config(
    width: int, rule: str, *, base_lr: float, base_width: int, head_dim: int, depth: int,
    batch: int, seed: int,
) -> RunConfig:
    """The run config of one (width, rule, seed) point: the paper's recipe at a tiny size."""
    if width % head_dim:
        raise ConfigError(f"width {width} is not a multiple of --head-dim {head_dim}")
    return from_dict({
        "seed": seed,
        "device": "cpu",
        "model": {"width": width, "depth": depth, "heads": width // head_dim, "patch": 2, "z_dim": 32},
        "mng": {"levels": min(4, depth)},
        "train": {"batch": batch, "lr_rule": rule, "base_lr": base_lr, "base_width": base_width},
        "eval": {"probe_batch": batch},
        "logging": {"wandb": "off"},
    })


def measured_modules(G: nn.Module, D: nn.Module) -> dict[str, nn.Module]:
    """The modules whose outputs are recorded, named `G.blocks.0.attn` etc.: the input layers,
    each block with its attention and FFN branches, and the output layers."""
    modules: dict[str, nn.Module] = {"G.mapping_net": G.mapping_net, "D.patch_embed": D.patch_embed}
    for net_name, net in (("G", G), ("D", D)):
        for index, block in enumerate(net.blocks):
            prefix = f"{net_name}.blocks.{index}"
            modules.update({prefix: block, f"{prefix}.attn": block.attn, f"{prefix}.ffn": block.ffn})
    modules.update({f"G.heads.{k}": head for k, head in enumerate(G.heads)})
    modules["D.head"] = D.head
    return modules


@torch.no_grad()
def activation_rms(G: nn.Module, D: nn.Module, probe: diagnostics.Probe) -> dict[str, float]:
    """RMS of each measured module's output on the probe batch (D sees the probe's reals)."""
    found: dict[str, float] = {}

    def hook(name: str):
        def record(_module: nn.Module, _inputs: object, output: Tensor | tuple) -> None:
            tensor = output[0] if isinstance(output, tuple) else output
            found[name] = float(tensor.float().pow(2).mean().sqrt())
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in measured_modules(G, D).items()]
    try:
        G(probe.z, probe.y)
        D(probe.d_input, probe.d_labels)
    finally:
        for handle in handles:
            handle.remove()
    return found


def run_point(config: RunConfig, dataset: LatentDataset, steps: int) -> Iterator[dict]:
    """Rows (see COLUMNS) for one config: activations at init and after each training step."""
    device = torch.device(config.device)
    nets = build_nets(config, data_dims(dataset), device)
    probe = diagnostics.make_probe(dataset, config, nets.G.z_dim, device)
    iterations = Iterations(config, nets, dataset, device)
    point = {"width": config.model.width, "rule": config.train.lr_rule, "seed": config.seed}
    for step in range(steps + 1):
        if step:
            iterations(step - 1)
        for module, rms in activation_rms(nets.G, nets.D, probe).items():
            yield {"net": module.split(".", 1)[0], "module": module.split(".", 1)[1], **point, "step": step, "rms": rms}


def coord_check(
    widths: list[int], rules: list[str], *, steps: int = 5, seeds: list[int] | None = None,
    data: str = "random", base_lr: float = 2e-3, base_width: int | None = None, head_dim: int = 16,
    depth: int = 2, batch: int = 16,
) -> list[dict]:
    """All rows for the widths × rules × seeds grid. `data`: random (RandomLatents) or fmnist
    (the trainer's Fashion-MNIST latents). `base_width` defaults to the smallest width, where
    every rule gives the same LR."""
    for rule in rules:
        if rule not in RULES:
            raise ConfigError(f"unknown LR rule {rule!r} (choose from {', '.join(RULES)})")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))  # tiny models: threads only add overhead
    base_width = base_width or min(widths)
    real = load_dataset(DataConfig(kind="fashion_mnist")) if data == "fmnist" else None
    rows: list[dict] = []
    datasets = {seed: real or RandomLatents(seed=seed) for seed in seeds or [0]}
    points = [(seed, rule, width) for seed in datasets for rule in rules for width in widths]
    for seed, rule, width in tqdm(points, desc="coord check", unit="model", disable=None):
        dataset = datasets[seed]
        config = check_config(width, rule, base_lr=base_lr, base_width=base_width, head_dim=head_dim,
                              depth=depth, batch=batch, seed=seed)
        rows.extend(run_point(config, dataset, steps))
    return rows


def write_csv(rows: list[dict], path: Path) -> Path:
    """Write the rows as CSV (COLUMNS order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad arguments)."""
    args = parser().parse_args(argv)

    def body() -> int:
        rows = coord_check(args.widths, args.rules, steps=args.steps, seeds=args.seeds, data=args.data,
                           base_lr=args.base_lr, base_width=args.base_width, head_dim=args.head_dim,
                           depth=args.depth, batch=args.batch)
        path = write_csv(rows, args.out / "coord_check.csv")
        cli.say(f"wrote {len(rows)} rows to {path}")
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
