"""Time full GAT training steps (D step + G step, gat.step.train_step) on random latents.

    python -m gat.bench [CONFIG] --model NAME --batch B --steps N [--device auto|cpu|cuda]
                        [--latent-size 32] [--set k=v ...]

CONFIG is a trainer YAML to start from (default: the paper's recipe); NAME is a registry name
(GAT-B/2) or wWIDTH-dDEPTH-hHEADS-pPATCH. Prints ms per step, images/s
and peak memory; on CUDA also the achieved TFLOP/s and MFU. FLOPs per step are `contract.flops`'
count (the one the planner and the analysis use) from the registry's forward multiply-add
counts, ignoring activation-checkpoint recompute, REPA, EMA and the optimiser. The peak is the
dense bf16 tensor-core figure of the detected GPU (table below; override with --peak-tflops).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from contract import cli


def parser() -> cli.Parser:
    """The command line of `python -m gat.bench`, built before the heavy imports below."""
    parser = cli.Parser("gat.bench", __doc__)
    parser.add_argument("config", nargs="?", default=None,
                        help="trainer config YAML to start from: a path or a bundled name (default: the paper's recipe)")
    parser.add_argument("--model", required=True, help="registry name (GAT-B/2) or w384-d12-h6-p2")
    parser.add_argument("--batch", type=int, required=True, help="training batch (images per D and G step)")
    parser.add_argument("--steps", type=int, required=True, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator, kernels, compile)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (auto: a GPU when there is one)")
    parser.add_argument("--latent-size", type=int, default=32, help="latent side (32 for 256² SD-VAE latents)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classes of the conditional models")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable)")
    return parser


if __name__ == "__main__":  # --help, --version and usage errors answer before torch loads (seconds)
    parser().parse_args()


import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from gat import step  # noqa: E402
from contract.config import load_config, parse_set  # noqa: E402
from contract.errors import ConfigError, UserError  # noqa: E402
from contract.flops import training_flops_per_image  # noqa: E402
from contract.model_shape import describe  # noqa: E402
from contract.sizes import parse_size  # noqa: E402

# Dense (non-sparse) bf16 peak TFLOP/s by device-name substring, from the vendors' datasheets.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A6000": 155.0, "4090": 165.0}


def step_flops(summary: dict, batch: int, penalty: str) -> float:
    """FLOPs of one training iteration (`contract.flops.training_flops_per_image` × batch)."""
    return batch * training_flops_per_image(summary["generator_gflops"], summary["discriminator_gflops"], penalty)


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints one line of results."""
    command = parser()
    args = command.parse_args(argv)
    for name in ("batch", "steps", "latent_size", "num_classes"):
        if getattr(args, name) < 1:
            command.error(f"--{name.replace('_', '-')} must be at least 1")
    return cli.run(lambda: bench(args))


def bench(args) -> int:
    """Time the steps `args` describes and print the result line."""
    if args.config is not None and not Path(args.config).is_file() and _is_size(args.config):
        raise UserError(f"{args.config} is a model size, not a config file: pass --model {args.config}")
    overrides = {"model.name": args.model, "train.batch": args.batch, "device": args.device, **parse_set(args.overrides)}
    config = load_config(args.config, overrides)
    device = step.resolve_device(config)
    dims = {"latent_channels": 4, "latent_size": args.latent_size, "num_classes": args.num_classes}
    nets = step.build_nets(config, dims, device)
    amp = step.autocast(config, device)
    generator = torch.Generator(device=device).manual_seed(0)
    size = args.latent_size
    batch = step.Batch(
        reals=torch.randn(args.batch, 4, size, size, device=device),
        labels=torch.randint(args.num_classes, (args.batch,), device=device),
        images=torch.rand(args.batch, 3, 8 * size, 8 * size, device=device) if nets.encoder is not None else None,
        z=torch.randn(args.batch, nets.G.z_dim, device=device),
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # A bar on a terminal only; its update costs microseconds, nothing next to a step.
    with tqdm(total=args.warmup + args.steps, unit="step", desc="bench", disable=None, leave=False) as bar:
        for _ in range(args.warmup):
            step.train_step(nets, batch, config, generator, amp)
            bar.update()
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        for _ in range(args.steps):
            step.train_step(nets, batch, config, generator, amp)
            bar.update()
        sync()
        seconds = (time.perf_counter() - started) / args.steps

    summary = describe(config, **dims, repa_dim=nets.encoder.dim if nets.encoder is not None else None)
    line = (f"{args.model} batch {args.batch} on {step.device_name(device)}: {seconds * 1e3:.1f} ms/step, "
            f"{args.batch / seconds:.1f} images/s, peak memory {step.peak_memory_mb(device):.0f} MiB")
    flops = step_flops(summary, args.batch, config.loss.penalty)
    achieved = flops / seconds / 1e12
    line += f", {flops / 1e12:.3g} TFLOP/step (estimate), {achieved:.3g} TFLOP/s"
    peak = peak_tflops(device, args.peak_tflops)
    if peak:
        line += f", MFU {100 * achieved / peak:.1f}% of {peak:g} TFLOP/s bf16 peak"
    cli.say(line)
    return 0


def _is_size(text: str) -> bool:
    try:
        parse_size(text)
    except ConfigError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
