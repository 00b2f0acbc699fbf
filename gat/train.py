"""Train one GAT run into a run folder (docs/run_folder.md).

    python -m gat.train CONFIG.yaml --out RUN_DIR [--set key=value ...] [--dry-run]

Each iteration (paper §2.6) is one D step then one G step on the same z, labels and real batch:

    fakes = G(z, y), once (G does not change before its own step)
    D step: L_D = relativistic + γ/2·(aR1 + aR2) + λ·REPA on the detached fakes, reals, fakes
            and the penalties' shifted copies scored in one batched D pass
    G step: L_G = relativistic against D(real) scored without grad, backpropagated through
            the fakes' graph
    then: G's per-class w average, G's EMA (0.999)

AdamW (β = (0, 0.99)), width-aware LR per network, gradient-norm clipping at 1.0, bf16 autocast
on CUDA. A run folder resumes exactly: model, EMA, optimisers and RNG states are checkpointed,
and every random draw of a step is seeded from (seed, step, rank), so N steps + resume + N
steps equals 2N steps bitwise on CPU. A non-finite loss or gradient ends the run as `diverged`,
a sustained FD blow-up (CollapseWatch) as `collapsed` (both data points, exit 0); an exception ends it as `failed` (exit 1).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from contract import cli


def parser() -> cli.Parser:
    """The command line of `python -m gat.train`, built before the heavy imports below."""
    parser = cli.Parser("gat.train", __doc__)
    parser.add_argument("config", help="trainer config YAML: a path, or a bundled name (fmnist.yaml, imagenet256.yaml)")
    parser.add_argument("--out", required=True, help="the run folder to write (created, or resumed if it holds a run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.steps=100 (repeatable)")
    parser.add_argument("--device", help="auto | cpu | cuda[:N]; shorthand for --set device=...")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and model summary, write nothing")
    parser.add_argument("--restart", action="store_true",
                        help="when no checkpoint of --out verifies, train again from step 0 (old stats.jsonl kept aside) instead of refusing")
    return parser


if __name__ == "__main__":  # --help, --version and usage errors answer before torch loads (seconds)
    parser().parse_args()


import torch  # noqa: E402
import yaml  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from gat import checkpoint, diagnostics, distributed
from contract import rundir  # noqa: E402
from contract.errors import UserError  # noqa: E402
from gat import eval as gat_eval  # noqa: E402
from contract.config import COSMETIC_KEYS, ConfigError, RunConfig, load_config, parse_set, save_config, to_dict  # noqa: E402
from gat.data import load_dataset, load_decoder  # noqa: E402
from gat.encoders import load_encoder  # noqa: E402
from gat.lr_rules import learning_rate, param_groups  # noqa: E402
from gat.models import registry  # noqa: E402
from contract.metric_names import metric_name  # noqa: E402
from gat.objective import discriminator_loss, generator_loss  # noqa: E402
from gat.sample import generate, image_grid  # noqa: E402
from gat.wandb_log import WandbLog  # noqa: E402

LOGGED_TERMS = ("loss_d", "loss_g", "r1", "r2", "repa", "grad_norm_g", "grad_norm_d")
GRID_SIZE = 64  # images per sample grid (8×8)


class ConfigMismatchError(UserError, RuntimeError):
    """RUN_DIR already holds a run with another configuration."""


# ---------------------------------------------------------------------------------------------
# Seeds, devices, precision


def stream_seed(seed: int, stream: str, step: int, rank: int = 0) -> int:
    """A 63-bit seed for one random stream at one step: draws depend on nothing else, so a
    resumed run replays them without storing generator states."""
    digest = hashlib.blake2b(f"{seed}/{stream}/{step}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def resolve_device(config: RunConfig, local_rank: int = 0) -> torch.device:
    """`device: auto` is the local rank's GPU when there is one, else the CPU."""
    device = cli.device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def autocast(config: RunConfig, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """The forward-pass precision context: bf16 autocast on CUDA (`auto`), fp32 elsewhere."""
    precision = config.train.precision
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


# ---------------------------------------------------------------------------------------------
# Networks and optimisers


@dataclass
class Nets:
    """G, D, the EMA generator and their optimisers. `g_forward`/`d_forward` are what the
    step calls (compiled when `train.compile`); the plain modules hold the weights."""

    G: nn.Module
    D: nn.Module
    G_ema: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    encoder: nn.Module | None
    g_forward: Callable[..., list[Tensor]]
    d_forward: nn.Module
    lr_g: float
    lr_d: float


def data_dims(dataset) -> dict[str, int]:
    """What the model builders need to know about the data."""
    return {
        "latent_channels": dataset.latent_channels,
        "latent_size": dataset.latent_size,
        "num_classes": dataset.num_classes,
    }


def build_nets(config: RunConfig, dims: dict[str, int], device: torch.device) -> Nets:
    """Build G, D (+ REPA encoder), the EMA copy and AdamW for each, from `config.seed`."""
    torch.manual_seed(config.seed)
    encoder = load_encoder(config.repa, device)
    G = registry.build_generator(config, **dims).to(device)
    D = registry.build_discriminator(config, **dims, repa_dim=encoder.dim if encoder is not None else None).to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    g_width = registry.generator_size(config.model).width
    d_width = registry.discriminator_size(config.model).width
    t = config.train
    compile_ = torch.compile if t.compile else (lambda module: module)
    return Nets(
        G=G, D=D, G_ema=G_ema, encoder=encoder,
        opt_g=make_optimizer(config, G, g_width),
        opt_d=make_optimizer(config, D, d_width, t.d_lr_mult),
        g_forward=compile_(G), d_forward=compile_(D),
        lr_g=learning_rate(t.lr_rule, g_width, t.base_lr, t.base_width),
        lr_d=learning_rate(t.lr_rule, d_width, t.base_lr, t.base_width) * t.d_lr_mult,
    )


def make_optimizer(config: RunConfig, model: nn.Module, width: int, lr_mult: float = 1.0) -> torch.optim.Optimizer:
    """AdamW over the LR rule's parameter groups for a network of this width, each LR × `lr_mult`."""
    t = config.train
    groups = param_groups(t.lr_rule, model, width, t.base_lr, t.base_width)
    for group in groups:
        group["lr"] *= lr_mult
    # The fused kernel exists for CPU and CUDA tensors and replaces ~15 ops per parameter.
    return torch.optim.AdamW(groups, betas=(t.beta1, t.beta2), eps=t.eps, weight_decay=t.weight_decay, fused=True)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model for parameters; buffers (the w average) are copied."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    torch._foreach_copy_(list(ema.buffers()), list(model.buffers()))


def clip_gradients(model: nn.Module, max_norm: float) -> Tensor:
    """Average gradients over ranks, clip them, and return the pre-clip global norm."""
    params = [p for p in model.parameters() if p.requires_grad]
    distributed.average_gradients(params)
    return torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf, foreach=True)


# ---------------------------------------------------------------------------------------------
# Data order


class DataOrder:
    """Iteration s reads global batch s mod (N // B) of a seeded per-epoch permutation (the
    ragged tail is dropped), so the order is a function of the step alone and resumes exactly."""

    def __init__(self, size: int, batch: int, seed: int):
        if size < batch:
            raise ConfigError(f"train.batch={batch} is larger than the dataset ({size} items)")
        self.size, self.batch, self.seed = size, batch, seed
        self.per_epoch = size // batch
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def indices(self, step: int) -> Tensor:
        epoch, position = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(stream_seed(self.seed, "epoch", epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.size, generator=generator)
        return self._perm[position * self.batch : (position + 1) * self.batch]


@dataclass
class Batch:
    """This rank's slice of one global batch, on the training device."""

    reals: Tensor
    labels: Tensor
    images: Tensor | None
    z: Tensor


def load_batch(dataset, order: DataOrder, config: RunConfig, step: int, where: distributed.DistEnv,
               z_dim: int, device: torch.device) -> Batch:
    """Rank r takes rows [r·b, (r+1)·b) of the global batch; z is drawn for the whole global
    batch (on CPU, so it does not depend on the device) and sliced the same way."""
    local = config.train.batch // where.world_size
    rows = slice(where.rank * local, (where.rank + 1) * local)
    data_gen = torch.Generator().manual_seed(stream_seed(config.seed, "data", step, where.rank))
    reals, labels, images = dataset.batch(order.indices(step)[rows], data_gen)
    z_gen = torch.Generator().manual_seed(stream_seed(config.seed, "z", step))
    z = torch.randn(config.train.batch, z_dim, generator=z_gen)[rows]
    to = lambda x: None if x is None else x.to(device, non_blocking=True)  # noqa: E731
    return Batch(reals=to(reals), labels=to(labels), images=to(images), z=to(z))


# ---------------------------------------------------------------------------------------------
# One training iteration


def d_step_attention(config: RunConfig) -> contextlib.AbstractContextManager:
    """The exact R1/R2 differentiate D's input gradient, and only the math attention kernel
    has a double backward (the fused CPU/flash kernels raise)."""
    if config.loss.penalty != "exact":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def train_step(nets: Nets, batch: Batch, config: RunConfig, generator: torch.Generator,
               amp: Callable[[], contextlib.AbstractContextManager]) -> dict[str, Tensor]:
    """One D step then one G step (paper §2.6); returns the detached terms to log."""
    G, D, clip = nets.G, nets.D, config.train.grad_clip

    # G runs once: D's step sees its outputs detached, and G's step, which comes before G
    # changes, backpropagates through the same graph.
    with amp():
        fakes = nets.g_forward(batch.z, batch.labels)
    D.requires_grad_(True)
    with amp(), d_step_attention(config):
        loss_d, terms_d = discriminator_loss(
            nets.d_forward, batch.reals, [x.detach() for x in fakes], batch.labels, config,
            images=batch.images, encoder=nets.encoder, generator=generator,
        )
    nets.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    grad_norm_d = clip_gradients(D, clip)
    nets.opt_d.step()

    # D only scores in the G step: freezing it skips its weight gradients.
    D.requires_grad_(False)
    with torch.no_grad():
        w = G.mapping(batch.z, batch.labels)
    with amp():
        loss_g, terms_g = generator_loss(nets.d_forward, batch.reals, fakes, batch.labels, config, generator=generator)
    nets.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    grad_norm_g = clip_gradients(G, clip)
    nets.opt_g.step()

    G.update_w_avg(distributed.all_gather_cat(w.float()), distributed.all_gather_cat(batch.labels))
    update_ema(nets.G_ema, G, config.train.ema_decay)
    terms = {
        "loss_d": terms_d["d_adv"], "loss_g": terms_g["g_adv"],
        "r1": terms_d.get("r1"), "r2": terms_d.get("r2"), "repa": terms_d.get("repa"),
        "grad_norm_g": grad_norm_g, "grad_norm_d": grad_norm_d,
    }
    return {key: value.detach().float() for key, value in terms.items() if value is not None}


def reduce_terms(terms: dict[str, Tensor]) -> dict[str, float]:
    """Rank-averaged terms as floats: one small all-reduce and one device sync per step, so
    every rank takes the same divergence decision."""
    keys = sorted(terms)
    values = distributed.all_mean(torch.stack([terms[k] for k in keys])).tolist()
    return dict(zip(keys, values))


class Meter:
    """Sums of the logged terms and step time since the last stats line (checkpointed, so a
    resumed run writes the same averages)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.seconds = 0.0

    def add(self, values: dict[str, float], seconds: float) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1
        self.seconds += seconds

    def flush(self) -> dict[str, Any]:
        """Means since the last flush (None for a term never logged), then reset."""
        means: dict[str, Any] = {key: self.sums[key] / self.steps if key in self.sums else None for key in LOGGED_TERMS}
        means["sec_per_step"] = self.seconds / max(self.steps, 1)
        self.reset()
        return means

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "steps": self.steps, "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums, self.steps, self.seconds = dict(state["sums"]), state["steps"], state["seconds"]


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------------------------------------
# Sampling and evaluation (rank 0)


def save_sample_grids(run_dir: Path, step: int, G_ema: nn.Module, decoder: Callable[[Tensor], Tensor],
                      config: RunConfig, num_classes: int, device: torch.device) -> dict[float, Path]:
    """samples/step-XXXXXXX.png (no truncation) and …-psi{eval.sample_psi}.png, one class per
    column cycle, the same z at every step so grids can be compared over training. Returns the
    files written, by psi."""
    from PIL import Image

    folder = run_dir / rundir.SAMPLES
    folder.mkdir(exist_ok=True)
    labels = torch.arange(GRID_SIZE) % num_classes
    written = {}
    for psi, suffix in ((0.0, ""), (config.eval.sample_psi, f"-psi{config.eval.sample_psi:g}")):
        chunks = [decoder(x) for x, _ in generate(G_ema, GRID_SIZE, num_classes, config.seed, device, psi=psi, labels=labels)]
        written[psi] = folder / f"step-{step:07d}{suffix}.png"
        Image.fromarray(image_grid(torch.cat(chunks))).save(written[psi])
    return written


class Evaluator:
    """Fréchet distance of the EMA generator (untruncated, as the official training loop) against
    reference statistics, named by `contract.metric_names` (fid5k, fid5k_train, fd_fmnist...)."""

    def __init__(self, config: RunConfig, dataset, decoder: Callable[[Tensor], Tensor], device: torch.device):
        self.config, self.device, self.decoder = config, device, decoder
        self.num_classes = dataset.num_classes
        self.metric = metric_name(config.eval.extractor, config.eval.num_samples, bool(config.eval.ref_stats))
        if config.eval.extractor == "inception" and not config.eval.ref_stats:
            cli.say(
                f"warning: eval.ref_stats is empty, so FID is measured against {config.eval.num_samples} training "
                f"images and logged as {self.metric}; it is not comparable with published FID. For ImageNet-256, "
                "set eval.ref_stats to ADM's VIRTUAL_imagenet256_labeled.npz (see README, 'Comparable FID')",
                file=sys.stderr,
            )
        self.extractor = gat_eval.load_extractor(config.eval, device)
        if config.eval.ref_stats:
            self.ref = gat_eval.load_ref_stats(config.eval.ref_stats, self.extractor)
        else:  # cached across runs by gat.eval, keyed by the data and the extractor
            self.ref = gat_eval.dataset_stats(dataset, self.extractor, config.eval.num_samples, seed=0)

    @torch.no_grad()
    def __call__(self, G_ema: nn.Module) -> dict[str, float]:
        cfg = self.config.eval
        chunks = generate(G_ema, cfg.num_samples, self.num_classes, self.config.seed + 1, self.device)
        # A 50k-sample FID takes minutes: a bar of its own where the run shows one.
        with tqdm(total=cfg.num_samples, unit="img", desc=f"eval {self.metric}", leave=False,
                  disable=not wants_bar(self.config)) as bar:
            features = []
            for x, _ in chunks:
                features.append(self.extractor(self.decoder(x)).double().cpu())
                bar.update(len(x))
        mu, sigma = gat_eval.feature_stats(torch.cat(features))
        return {self.metric: float(gat_eval.frechet_distance(mu, sigma, *self.ref))}


# ---------------------------------------------------------------------------------------------
# Progress (rank 0)


def wants_bar(config: RunConfig) -> bool:
    """Progress bars (`logging.progress`): `bar` always, `auto` on a terminal, `lines` never."""
    mode = config.logging.progress
    return mode == "bar" or (mode == "auto" and sys.stderr.isatty())


class Progress:
    """A tqdm bar on a terminal, plain lines otherwise (`logging.progress`)."""

    def __init__(self, config: RunConfig, start: int, total: int):
        self.bar = None
        if wants_bar(config):
            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def report(self, record: dict[str, Any]) -> None:
        keys = ("loss_d", "loss_g", "grad_norm_d", "grad_norm_g", "sec_per_step")
        summary = {k: f"{record[k]:.4g}" for k in keys if record.get(k) is not None}
        summary.update({k: f"{v:.4g}" for k, v in record.get("metrics", {}).items()})
        if self.bar is not None:
            self.bar.set_postfix(summary, refresh=False)
        else:
            print(f"step {record['step']}: " + " ".join(f"{k}={v}" for k, v in summary.items()), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------
# The run


def check_run_dir(config: RunConfig, run_dir: Path, announce: bool = True) -> dict[str, Any] | None:
    """Refuse a folder that holds another config; return its status (None for a fresh folder).
    Keys in COSMETIC_KEYS may differ: the run resumes with the new values (said when `announce`)."""
    existing = run_dir / rundir.CONFIG
    if existing.is_file():
        theirs = to_dict(load_config(existing))
        ours = to_dict(config)
        diff = sorted(_diff_keys(theirs, ours))
        # a cosmetic key's nested values (logging.grid_point.seed) are cosmetic too
        changed = [key for key in diff if not any(key == c or key.startswith(c + ".") for c in COSMETIC_KEYS)]
        if changed:
            raise ConfigMismatchError(
                f"{run_dir} holds a run with a different config (differs at: {', '.join(changed)}); "
                "use another --out folder"
            )
        if diff and announce:
            print(f"{run_dir}: resuming with new {', '.join(diff)} (they do not change the run; config.yaml is updated)")
    return rundir.read_status(run_dir)


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            keys += _diff_keys(a[key], b[key], f"{prefix}{key}.")
        elif a.get(key) != b.get(key):
            keys.append(prefix + key)
    return keys


def training_state(nets: Nets, step: int, meter: Meter, wall_s: float, dims: dict[str, int]) -> dict[str, Any]:
    """Everything a resume needs (and the dims the sampler needs to rebuild G)."""
    return {
        "step": step,
        "G": nets.G.state_dict(), "D": nets.D.state_dict(), "G_ema": nets.G_ema.state_dict(),
        "opt_g": nets.opt_g.state_dict(), "opt_d": nets.opt_d.state_dict(),
        "rng": checkpoint.rng_state(), "meter": meter.state_dict(), "wall_s": wall_s, "dims": dims,
    }


def restore(nets: Nets, state: dict[str, Any], meter: Meter) -> None:
    for name in ("G", "D", "G_ema", "opt_g", "opt_d"):
        getattr(nets, name).load_state_dict(state[name])
    meter.load_state_dict(state["meter"])
    checkpoint.set_rng_state(state["rng"])


def device_name(device: torch.device) -> str:
    """A human-readable device for provenance.json."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x{torch.cuda.device_count()}"
    return f"cpu ({torch.get_num_threads()} threads)"


class CollapseWatch:
    """Collapse with finite losses (docs/run_folder.md): the eval metric (FD, lower is better)
    above `ratio` × its best so far at `patience` evals in a row. `patience` 0 never fires."""

    def __init__(self, ratio: float, patience: int):
        self.ratio, self.patience = ratio, patience
        self.best, self.streak, self.since = math.inf, 0, None
        self.fired: dict[str, Any] | None = None

    def update(self, step: int, metrics: dict[str, float]) -> dict[str, Any] | None:
        """Feed one eval's metrics; return the collapse record the first time the rule fires."""
        if not metrics or not self.patience or self.fired is not None:
            return None
        name, value = next(iter(metrics.items()))
        if value > self.ratio * self.best:
            self.streak += 1
            self.since = self.since if self.streak > 1 else step
        else:
            self.best, self.streak = min(self.best, value), 0
        if self.streak < self.patience:
            return None
        self.fired = {"step": step, "signal": name, "value": value, "best": self.best, "since": self.since,
                      "reason": f"{name} {value:.4g} above {self.ratio:g}x its best {self.best:.4g} "
                                f"at {self.patience} evals in a row since step {self.since}"}
        return self.fired


class Reporter:
    """Rank 0's outputs at log and eval ticks: stats lines, W&B, progress, Fréchet distance,
    diagnostics and sample grids. On other ranks every method is a no-op."""

    def __init__(self, config: RunConfig, run_dir: Path, dataset, nets: Nets, device: torch.device,
                 start: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        self.config, self.run_dir, self.nets, self.device = config, run_dir, nets, device
        self.num_classes = dataset.num_classes
        self.wandb = WandbLog(config, run_dir, start)
        self.progress = Progress(config, start, config.train.steps)
        self.decoder = load_decoder(config.data).to(device)
        wants_fd = config.eval.extractor != "none" and config.eval.num_samples > 0
        self.evaluator = Evaluator(config, dataset, self.decoder, device) if wants_fd else None
        self.probe = diagnostics.make_probe(dataset, config, nets.G.z_dim, device)
        self.collapse = CollapseWatch(config.train.collapse_fd_ratio, config.train.collapse_patience)
        if start and (run_dir / rundir.STATS).exists():  # a resume replays the evals it keeps
            for line in (run_dir / rundir.STATS).read_text().splitlines():
                record = json.loads(line)
                self.collapse.update(record["step"], record.get("metrics") or {})

    def step(self) -> None:
        if self.enabled:
            self.progress.step()

    def log(self, step: int, meter: Meter, wall_s: float,
            previous: tuple[nn.Module, nn.Module] | None = None) -> dict[str, Any] | None:
        """Write one stats line; with `previous` (the weights one step ago) it is an eval tick.
        Returns the collapse record when this eval fires the collapse rule."""
        if not self.enabled:
            return None
        means = meter.flush()
        batch = self.config.train.batch
        record: dict[str, Any] = {"step": step, "images_seen": step * batch, "wall_s": wall_s}
        record.update({key: means[key] for key in LOGGED_TERMS})
        record.update(
            lr_g=self.nets.lr_g, lr_d=self.nets.lr_d, sec_per_step=means["sec_per_step"],
            images_per_s=batch / means["sec_per_step"] if means["sec_per_step"] > 0 else None,
            peak_mem_mb=peak_memory_mb(self.device),
        )
        samples: dict[float, Path] = {}
        if previous is not None:
            record["metrics"] = self.evaluator(self.nets.G_ema) if self.evaluator is not None else {}
            record["diagnostics"] = diagnostics.measure(self.nets.G, self.nets.D, *previous, self.probe)
            samples = save_sample_grids(self.run_dir, step, self.nets.G_ema, self.decoder, self.config,
                                        self.num_classes, self.device)
            if collapse := self.collapse.update(step, record["metrics"]):
                record["collapse"] = collapse
        rundir.append_stats(self.run_dir, record)
        self.wandb.log(record, samples)
        self.progress.report(record)
        return record.get("collapse")

    def close(self, state: str) -> None:
        if self.enabled:
            self.progress.close()
            self.wandb.finish(exit_code=0 if state in rundir.FINAL_STATES else 1)


class StopSignals:
    """SIGTERM (SLURM before a preemption or the time limit), SIGUSR2 (submitit) and SIGINT are
    noted, not obeyed at once: the loop finishes its step and checkpoints, then `die` ends the
    process by the same signal, which the sweep job treats as requeue-able. Only for a single
    process in the main thread: ranks of a multi-process run could stop at different steps."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)

    def __init__(self, enabled: bool):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        if enabled and threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._note) for sig in self.SIGNALS}

    def _note(self, signum: int, frame: Any) -> None:
        self.received = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def die(self) -> None:
        """Exit by the signal received, with its default action (rc -N, i.e. 128+N in a shell)."""
        self.restore()
        signal.signal(self.received, signal.SIG_DFL)
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), self.received)


def run(config: RunConfig, run_dir: str | Path, restart: bool = False) -> str:
    """Train (or resume) the run in `run_dir`; return its final state, `completed` or `diverged`.

    A finished run (`completed`/`diverged`) is left alone. An exception is recorded as `failed`
    in status.json and re-raised. Checkpoint files of which none verifies are refused
    (NoVerifiedCheckpoint) unless `restart`, which starts over and sets the old stats aside.
    A preemption signal checkpoints the step reached, then ends the process by that signal.
    Under torchrun or a multi-task SLURM step every rank calls this; only rank 0 writes.
    """
    run_dir = Path(run_dir)
    where = distributed.init(resolve_device(config).type)
    try:
        state = _run(config, run_dir, where, restart)
        # Every rank has closed its logs before any tears the group down: a rank leaving while
        # another still talks to the store can abort the other (seen once in CI under gloo).
        distributed.barrier()
        return state
    finally:
        distributed.shutdown()


def _run(config: RunConfig, run_dir: Path, where: distributed.DistEnv, restart: bool) -> str:
    device = resolve_device(config, where.local_rank)
    status = check_run_dir(config, run_dir, where.is_main)
    if status is not None and status["state"] in rundir.FINAL_STATES:
        if where.is_main:
            print(f"{run_dir}: already {status['state']} at step {status['step']}; nothing to do")
        return status["state"]
    main = where.is_main
    lock = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = rundir.lock_writer(run_dir)
    # Read before the try: a refusal here is the user's to decide, not a `failed` run.
    try:
        state = checkpoint.load_latest(run_dir / "checkpoints")
        recorded = int((status or {}).get("checkpoint_step") or 0)
        if state is None and recorded > 0:
            raise checkpoint.NoVerifiedCheckpoint([], f"status.json records a checkpoint at step {recorded}, "
                                                      f"but {run_dir / 'checkpoints'} holds none")
    except checkpoint.NoVerifiedCheckpoint as err:
        if not restart:
            if lock is not None:
                lock.release()
            raise UserError(f"{err}; rerun with --restart to train {run_dir} again from step 0") from None
        state = None
        cli.say(f"warning: {err}; restarting from step 0", file=sys.stderr)
    t = config.train
    step, reporter, outcome = 0, None, "interrupted"
    stop = StopSignals(where.world_size == 1)
    durable = int(state["step"]) if state is not None else 0  # the last checkpoint written: where a resume starts
    try:
        if t.batch % where.world_size:
            raise ConfigError(f"train.batch={t.batch} is not divisible by the {where.world_size} ranks")
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on CUDA, as the official code
        dataset = load_dataset(config.data)
        dims = data_dims(dataset)
        nets = build_nets(config, dims, device)
        amp = autocast(config, device)
        order = DataOrder(len(dataset), t.batch, config.seed)
        meter = Meter()
        wall_before = 0.0
        if state is not None:
            restore(nets, state, meter)
            step, wall_before = int(state["step"]), float(state["wall_s"])
        del state  # the loaded CPU copy of every tensor is no longer needed
        if main:
            save_config(config, run_dir / rundir.CONFIG)
            repa_dim = nets.encoder.dim if nets.encoder is not None else None
            rundir.write_json_atomic(run_dir / rundir.MODEL, registry.describe(config, **dims, repa_dim=repa_dim))
            rundir.record_attempt(run_dir, device_name(device), step, torch.get_num_threads())
            if step:
                rundir.truncate_stats(run_dir, step)  # lines past the checkpoint are about to be redone
            elif moved := rundir.set_aside(run_dir / rundir.STATS):  # a run's history is never deleted
                cli.say(f"warning: training from step 0; the old stats are kept in {moved}", file=sys.stderr)
            rundir.write_status(run_dir, "running", step, checkpoint_step=durable)
        reporter = Reporter(config, run_dir, dataset, nets, device, step, main)
        step_generator = torch.Generator(device=device)
        started = time.perf_counter()

        while step < t.steps:
            is_eval = (step + 1) % config.eval.every == 0 or step + 1 == t.steps
            # Diagnostics measure how far one step moves G's output and D's logits.
            previous = (copy.deepcopy(nets.G), copy.deepcopy(nets.D)) if is_eval and main else None

            tick = time.perf_counter()
            batch = load_batch(dataset, order, config, step, where, nets.G.z_dim, device)
            step_generator.manual_seed(stream_seed(config.seed, "step", step, where.rank))
            terms = reduce_terms(train_step(nets, batch, config, step_generator, amp))
            step += 1
            meter.add(terms, time.perf_counter() - tick)
            reporter.step()
            wall_s = wall_before + time.perf_counter() - started

            bad = sorted(key for key, value in terms.items() if not math.isfinite(value))
            if bad:
                reporter.log(step, meter, wall_s)
                if main:
                    rundir.write_status(run_dir, "diverged", step, f"non-finite {', '.join(bad)} at step {step}",
                                        checkpoint_step=durable)
                outcome = "diverged"
                return outcome
            if step % t.log_every == 0 or is_eval:
                collapse = reporter.log(step, meter, wall_s, previous)
                # Only rank 0 evaluates, so only a single process can stop on it in step.
                if collapse and t.collapse_stop and where.world_size == 1:
                    state = training_state(nets, step, meter, wall_s, dims)
                    checkpoint.save(run_dir / "checkpoints", state, snapshot=False)
                    durable = step
                    rundir.write_status(run_dir, "collapsed", step, collapse["reason"], checkpoint_step=durable)
                    outcome = "collapsed"
                    return outcome
            if main and (step % t.ckpt_every == 0 or step == t.steps or stop.received is not None):
                state = training_state(nets, step, meter, wall_s, dims)
                checkpoint.save(run_dir / "checkpoints", state, snapshot=step % t.snapshot_every == 0)
                durable = step
                # The recorded step follows the checkpoints, so a later failure to resume never
                # reports less progress than a good checkpoint holds.
                rundir.write_status(run_dir, "running", step, checkpoint_step=durable)
            del previous
            if stop.received is not None and step < t.steps:
                cli.say(f"{run_dir}: signal {stop.received} at step {step}; checkpointed, stopping", file=sys.stderr)
                reporter.close(outcome)
                reporter = None
                stop.die()

        fired = reporter.collapse.fired if main else None
        outcome = "collapsed" if fired else "completed"
        if main:
            rundir.write_status(run_dir, outcome, fired["step"] if fired else step,
                                fired["reason"] if fired else None, checkpoint_step=durable)
        return outcome
    except Exception as err:
        if main:
            try:
                rundir.write_status(run_dir, "failed", step, f"{type(err).__name__}: {err}",
                                    checkpoint_step=durable)
            except OSError as status_err:  # the disk that failed the run may refuse this too
                err.add_note(f"status.json could not record the failure either: {status_err}")
        outcome = "failed"
        raise
    finally:  # also on KeyboardInterrupt/SystemExit, which leave the run `running` (resumable)
        stop.restore()
        if reporter is not None:
            reporter.close(outcome)
        if lock is not None:
            lock.release()


# ---------------------------------------------------------------------------------------------
# CLI


def dry_run(config: RunConfig) -> None:
    """Print the resolved config and the model summary; write nothing."""
    dims = data_dims(load_dataset(config.data))
    encoder = load_encoder(config.repa, "cpu")
    summary = registry.describe(config, **dims, repa_dim=encoder.dim if encoder is not None else None)
    print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
    print("---")
    print(json.dumps(summary, indent=2))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 also for a diverged run: it is a result)."""
    args = parser().parse_args(argv)

    def body() -> int:
        overrides = parse_set(args.overrides)
        if args.device is not None:
            overrides["device"] = args.device
        config = load_config(args.config, overrides)
        resolve_device(config)  # `--device cuda` on a machine without one: an error, before any folder
        if args.dry_run:
            dry_run(config)
            return 0
        try:
            state = run(config, Path(args.out), restart=args.restart)
        except OSError as err:  # a full disk, a read-only or unwritable folder: not a bug to trace
            err.add_note("the run stopped; free space or fix permissions, then rerun to resume from the last checkpoint")
            raise
        cli.say(f"{args.out}: {state}")
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
