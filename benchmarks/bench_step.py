"""Milliseconds per training iteration (D step + G step + EMA), before and after a change and
against the official GAT code, measured in one run.

    python benchmarks/bench_step.py [--before REV] [--official PATH] [--compile] [--rounds 3] [--only w32-b16]

Cases: widths 32/64/128/256 (depth 4, 4 heads, patch 2) on Fashion-MNIST-shaped latents
(4x8x8, 10 classes, gat/configs/fmnist.yaml) at batch 16 and 64 on one thread, and GAT-S/4
(the paper recipe without REPA; 4x32x32 latents, 1000 classes) at batch 8 on two threads.

`--before REV` (default 680806f, the step before batched D passes) times the `gat` package of
that commit, extracted with `git archive`; "after" is this checkout. `--official PATH` times
the official code (a checkout of github.com/hse1032/GAT, which needs `timm` and `einops`) on
GAT-S/4 with its released settings: approximate R1/R2 every step, γ 0.1, no REPA. Its D and G
steps are driven as its train.py does. Each timing runs in a fresh subprocess; rounds
interleave the implementations so that a slow spell of a shared machine hits all of them,
and the table gives the median over every timed block of every round.

`--compile` adds a column for this checkout with `train.compile: true` (G and D through
torch.compile) and the seconds its warm-up steps took, which is where the compiling happens:
in the first round with an empty compile cache, in later rounds with the cache the first filled.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "680806f"
# steps: per timed block, so that a block takes about a second (a GAT-S/4 step takes seconds).
SMALL = [
    {"name": f"w{w}-b{b}", "width": w, "batch": b, "threads": 1, "steps": max(2, 16 * 32 // w * 16 // b)}
    for w in (32, 64, 128, 256) for b in (16, 64)
]
PAPER = {"name": "GAT-S/4-b8", "model": "GAT-S/4", "batch": 8, "threads": 2, "steps": 2}
WARMUP, BLOCKS = 2, 3


# ---------------------------------------------------------------------------------------------
# Workers (each runs in its own process with the implementation's code on sys.path)


def time_blocks(step, case: dict) -> dict[str, float | list[float]]:
    """Seconds the warm-up steps took, and ms per step of each timed block after them."""
    started = time.perf_counter()
    for _ in range(WARMUP):
        step()
    warmup_s = time.perf_counter() - started
    count = case["steps"]
    blocks = []
    for _ in range(BLOCKS):
        started = time.perf_counter()
        for _ in range(count):
            step()
        blocks.append((time.perf_counter() - started) / count * 1e3)
    return {"warmup_s": warmup_s, "blocks": blocks}


def gatscale_step(case: dict):
    """One gatscale iteration on random latents, through the public step API that every
    version since the trainer landed shares."""
    import torch
    from contract.config import load_config

    try:
        from gat import step
    except ModuleNotFoundError:  # a --before commit from before gat/step.py: the same names were in gat.train
        from gat import train as step

    if not Path(step.__file__).resolve().is_relative_to(Path.cwd().resolve()):
        raise RuntimeError(f"imported {step.__file__}, not the tree under {Path.cwd()}")
    common = {"train.batch": case["batch"], "device": "cpu"}
    if case.get("compile"):  # only then: a --before commit need not know the key
        common["train.compile"] = True
    if "model" in case:
        config = load_config(None, {"model.name": case["model"], **common})
        dims = {"latent_channels": 4, "latent_size": 32, "num_classes": 1000}
    else:
        overrides = {"model.width": case["width"], "model.patch": 2, **common}
        config = load_config(Path(step.__file__).parent / "configs" / "fmnist.yaml", overrides)
        dims = {"latent_channels": 4, "latent_size": 8, "num_classes": 10}
    nets = step.build_nets(config, dims, torch.device("cpu"))
    amp = step.autocast(config, torch.device("cpu"))
    size, batch = dims["latent_size"], case["batch"]
    data = torch.Generator().manual_seed(0)
    inputs = step.Batch(
        reals=torch.randn(batch, 4, size, size, generator=data),
        labels=torch.randint(dims["num_classes"], (batch,), generator=data),
        images=None, z=torch.randn(batch, nets.G.z_dim, generator=data),
    )
    generator = torch.Generator().manual_seed(0)
    return lambda: step.train_step(nets, inputs, config, generator, amp)


def allow_timm_without_torchvision() -> None:
    """timm imports torchvision at import time, and no torchvision wheel matches a CPU-only
    torch from PyPI. The GAT modules use none of it, so placeholder modules stand in."""
    import importlib.abc
    import importlib.machinery
    import importlib.util
    import types

    if importlib.util.find_spec("torchvision") is not None:
        return

    class Placeholder(type):
        def __getattr__(cls, name: str):
            if name.startswith("__"):
                raise AttributeError(name)
            return f"{cls.__name__}.{name}"

    class Module(types.ModuleType):
        __path__: list[str] = []

        def __getattr__(self, name: str):
            if name.startswith("__"):
                raise AttributeError(name)
            return Placeholder(name, (), {})

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torchvision":
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            return Module(spec.name)

        def exec_module(self, module) -> None:
            pass

    sys.meta_path.insert(0, Finder())


def official_step(case: dict, path: str):
    """One iteration of the official train.py loop: D step, G step, EMA (decay 0.999)."""
    import copy

    import torch
    from torch import nn

    allow_timm_without_torchvision()
    sys.path.insert(0, path)
    from losses.Rp_loss import RpGANLoss
    from models.discriminator import GATD_models
    from models.generator import GAT_models

    class Wrapped(nn.Module):  # the loss reads `.module`, as under accelerate's DDP
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    torch.manual_seed(0)
    kwargs = {"input_size": 32, "num_classes": 1000, "z_dims": [0], "fused_attn": True, "qk_norm": True}
    G, D = GAT_models[case["model"]](**kwargs), GATD_models[case["model"]](**kwargs)
    ema = copy.deepcopy(G).requires_grad_(False)
    G, D = Wrapped(G), Wrapped(D)
    opt_g = torch.optim.AdamW(G.parameters(), lr=2e-4, betas=(0.0, 0.99), weight_decay=0.0)
    opt_d = torch.optim.AdamW(D.parameters(), lr=2e-4, betas=(0.0, 0.99), weight_decay=0.0)
    loss_fn = RpGANLoss(encoders=None, accelerator=None, r1_every=1, r1_gamma=0.1, r2_every=1, r2_gamma=0.1,
                        approximate=True)
    data = torch.Generator().manual_seed(0)
    x = torch.randn(case["batch"], 4, 32, 32, generator=data)
    y = torch.randint(1000, (case["batch"],), generator=data)

    def update(net: nn.Module, optimizer: torch.optim.Optimizer, loss_of, model_kwargs: dict) -> None:
        net.module.requires_grad_(True)
        loss_of(G, D, None, x, None, 0, model_kwargs)[0].mean().backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        net.module.requires_grad_(False)

    def step() -> None:
        model_kwargs = {"y": y}  # step_disc adds z, which step_gen then reuses, as in train.py
        update(D, opt_d, loss_fn.step_disc, model_kwargs)
        update(G, opt_g, loss_fn.step_gen, model_kwargs)
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), G.module.parameters()):
                p_ema.mul_(0.999).add_(p.data, alpha=0.001)

    return step


def worker(kind: str, case: dict, official: str | None) -> None:
    import torch

    torch.set_num_threads(case["threads"])
    step = official_step(case, official) if kind == "official" else gatscale_step(case)
    print(json.dumps(time_blocks(step, case)))


# ---------------------------------------------------------------------------------------------
# Driver


def extract(rev: str, into: Path, paths: tuple[str, ...] = ("gat",)) -> Path:
    """The packages `paths` of commit `rev`, extracted under `into`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, *paths], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def measure(kind: str, code_root: Path, case: dict, official: str | None,
            compile_cache: Path) -> dict[str, float | list[float]]:
    env = {**os.environ, "PYTHONPATH": str(code_root), "OMP_NUM_THREADS": str(case["threads"]),
           "MKL_NUM_THREADS": str(case["threads"]), "TORCHINDUCTOR_CACHE_DIR": str(compile_cache)}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(case)]
    if official:
        command += ["--official", official]
    # Run from the code root so `import gat` finds that tree before any installed copy.
    done = subprocess.run(command, env=env, cwd=code_root, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} on {case['name']} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=BEFORE, help=f"commit to compare against (default {BEFORE})")
    parser.add_argument("--official", default=None, help="path to a checkout of the official GAT code")
    parser.add_argument("--compile", action="store_true", help="also time this checkout with train.compile: true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=None, help="comma-separated case names, e.g. w32-b16,GAT-S/4-b8")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("case", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, json.loads(args.case), args.official)
        return 0
    if args.official and not (Path(args.official) / "losses" / "Rp_loss.py").is_file():
        print(f"error: --official {args.official} is not a checkout of the official GAT code", file=sys.stderr)
        return 2

    cases = SMALL + [PAPER]
    if args.only:
        wanted = set(args.only.split(","))
        cases = [case for case in cases if case["name"] in wanted]
        if not cases:
            print(f"error: --only {args.only} names no case", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory() as tmp:
        try:
            before_root = extract(args.before, Path(tmp))
        except (OSError, subprocess.CalledProcessError) as err:
            detail = getattr(err, "stderr", b"") or str(err).encode()
            print(f"error: cannot extract gat/ at --before {args.before} from {ROOT} "
                  f"(a git checkout is needed): {detail.decode(errors='replace').strip()}", file=sys.stderr)
            return 2
        impls = {"before": ("gatscale", before_root), "after": ("gatscale", ROOT)}
        if args.compile:
            impls["compiled"] = ("gatscale", ROOT)
        results: dict[tuple[str, str], list[float]] = {}
        warmups: dict[str, list[float]] = {}
        for round_ in range(args.rounds):
            for case in cases:
                names = list(impls) + (["official"] if args.official and case is PAPER else [])
                for name in names if round_ % 2 == 0 else names[::-1]:
                    kind, code_root = impls.get(name, ("official", ROOT))
                    timed = measure(kind, code_root, {**case, "compile": name == "compiled"}, args.official,
                                    Path(tmp) / "inductor")
                    results.setdefault((case["name"], name), []).extend(timed["blocks"])
                    if name == "compiled":
                        warmups.setdefault(case["name"], []).append(timed["warmup_s"])
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    print(f"ms per iteration, median of {args.rounds} rounds x {BLOCKS} blocks (before = {args.before})")
    header = f"{'case':<12} {'threads':>7} {'before':>9} {'after':>9} {'speed-up':>9}"
    if args.compile:
        header += f" {'compiled':>9} {'speed-up':>9} {'warm-up s cold/cached':>22}"
    if args.official:
        header += f" {'official':>9} {'after/official':>15}"
    print(header)
    for case in cases:
        before = statistics.median(results[(case["name"], "before")])
        after = statistics.median(results[(case["name"], "after")])
        line = f"{case['name']:<12} {case['threads']:>7} {before:>9.1f} {after:>9.1f} {before / after:>8.2f}x"
        if args.compile:
            compiled = statistics.median(results[(case["name"], "compiled")])
            cold, *cached = warmups[case["name"]]
            warmup = f"{cold:.1f}/" + (f"{statistics.median(cached):.1f}" if cached else "-")
            line += f" {compiled:>9.1f} {before / compiled:>8.2f}x {warmup:>22}"
        if args.official and (case["name"], "official") in results:
            official = statistics.median(results[(case["name"], "official")])
            line += f" {official:>9.1f} {after / official:>15.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
