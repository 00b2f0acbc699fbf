"""`python -m gat.models NAME`: parameters, GFLOPs, MNG levels and per-rule LRs of a size.

NAME is a registry name (GAT-S/2 … GAT-XL/8) or an explicit size such as w384-d12-h6-p2.
Everything is counted analytically (`contract.model_shape`, no torch), so even GAT-XL/2
answers in a moment.
"""
from __future__ import annotations

import argparse
import json
import sys

from contract import cli
from contract.config import from_dict
from contract.model_shape import describe
from contract.sizes import MODELS


def _parser() -> argparse.ArgumentParser:
    parser = cli.Parser("gat.models", __doc__)
    parser.add_argument("name", help=f"{', '.join(MODELS)}, or w<width>-d<depth>-h<heads>-p<patch>")
    parser.add_argument("--json", action="store_true", help="print model.json's fields (plus `lr`) as JSON")
    parser.add_argument("--base-lr", type=float, default=2e-4, help="train.base_lr (default 2e-4)")
    parser.add_argument("--base-width", type=int, default=768, help="train.base_width (default 768)")
    parser.add_argument("--latent-size", type=int, default=32, help="latent height = width (default 32)")
    parser.add_argument("--latent-channels", type=int, default=4, help="latent channels (default 4)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classes (default 1000)")
    parser.add_argument("--repa-dim", type=int, default=768, help="REPA target dim; 0 = no projector (default 768)")
    return parser


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f}M"


def format_table(name: str, info: dict, base_lr: float, base_width: int) -> str:
    """The human-readable report: one column for G, one for D."""
    d_with_projector = info["discriminator_params"] + info["discriminator_projector_params"]
    rows = [
        ("", "G", "D"),
        ("width", info["g_width"], info["d_width"]),
        ("depth", info["g_depth"], info["d_depth"]),
        ("heads", info["g_heads"], info["d_heads"]),
        ("params", _millions(info["generator_params"]), _millions(info["discriminator_params"])),
        ("params + REPA projector", "", _millions(d_with_projector)),
        ("forward GFLOPs", f"{info['generator_gflops']:.2f}", f"{info['discriminator_gflops']:.2f}"),
    ]
    # mup's number is its hidden-matrix LR; its other parameters keep the base LR.
    rows += [
        (f"LR {rule}" + (" (hidden matrices)" if rule == "mup" else ""), f"{lr['G']:.3e}", f"{lr['D']:.3e}")
        for rule, lr in info["lr"].items()
    ]
    label_width = max(len(str(row[0])) for row in rows)
    lines = [f"{name}: patch {info['patch']}, {info['tokens']} tokens"]
    lines += [f"  {str(a):<{label_width}}  {str(b):>10}  {str(c):>10}" for a, b, c in rows]
    levels = ", ".join(f"{t:.4g}" for t in info["mng_noise_levels"])
    lines.append(f"  MNG noise levels t_k (shallow -> deep): {levels}")
    lines.append(f"  LRs from base {base_lr:g} at width {base_width}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the description of one size; exit code 2 for a bad name or setting."""
    args = _parser().parse_args(argv)

    def body() -> int:
        train = {"base_lr": args.base_lr, "base_width": args.base_width}
        config = from_dict({"model": {"name": args.name}, "train": train})
        info = describe(
            config,
            latent_channels=args.latent_channels,
            latent_size=args.latent_size,
            num_classes=args.num_classes,
            repa_dim=args.repa_dim or None,
        )
        cli.say(json.dumps(info, indent=2) if args.json else format_table(args.name, info, args.base_lr, args.base_width))
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
