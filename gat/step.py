"""The GAN step: networks, batches, random streams and one training iteration (paper §2.6).

Each iteration is one D step then one G step on the same z, labels and real batch:

    fakes = G(z, y), once (G does not change before its own step)
    D step: L_D = relativistic + γ/2·(aR1 + aR2) + λ·REPA on the detached fakes, reals, fakes
            and the penalties' shifted copies scored in one batched D pass
    G step: L_G = relativistic against D(real) scored without grad, backpropagated through
            the fakes' graph
    then: G's per-class w average, G's EMA (0.999)

AdamW (β = (0, 0.99)), width-aware LR per network, gradient-norm clipping at 1.0, bf16 autocast
on CUDA. Every random draw of iteration s is seeded from (seed, s, rank), so an iteration is the
same whether a run reached it straight or through a resume. `gat.train` loops over this;
`gat.bench` and `gat.coord_check` run it alone.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import resource
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from contract import cli
from contract.config import RunConfig
from contract.errors import ConfigError
from contract.lr_rules import learning_rate
from contract.model_shape import discriminator_size, generator_size
from gat import distributed
from gat.data.dataset import LatentDataset
from gat.encoders import load_encoder
from gat.lr_rules import param_groups
from gat.models import registry
from gat.objective import discriminator_loss, generator_loss

# The terms `train_step` returns (those a config switches off are left out).
LOGGED_TERMS = ("loss_d", "loss_g", "r1", "r2", "repa", "grad_norm_g", "grad_norm_d")


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


def device_name(device: torch.device) -> str:
    """A human-readable device for provenance.json and benchmark lines."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x{torch.cuda.device_count()}"
    return f"cpu ({torch.get_num_threads()} threads)"


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


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


def data_dims(dataset: LatentDataset) -> dict[str, int]:
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
    g_width = generator_size(config.model).width
    d_width = discriminator_size(config.model).width
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
        """The dataset indices of global batch `step`."""
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


def load_batch(dataset: LatentDataset, order: DataOrder, config: RunConfig, step: int, where: distributed.DistEnv,
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
    """One D step then one G step (paper §2.6); returns the detached terms to log (LOGGED_TERMS)."""
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


@dataclass
class Iterations:
    """A run's training iterations, called by index: `iterations(s)` loads global batch s
    (this rank's slice), seeds the step's stream from (seed, s, rank) and runs `train_step`."""

    config: RunConfig
    nets: Nets
    dataset: LatentDataset
    device: torch.device
    where: distributed.DistEnv = distributed.DistEnv()
    order: DataOrder = field(init=False)
    amp: Callable[[], contextlib.AbstractContextManager] = field(init=False)
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.order = DataOrder(len(self.dataset), self.config.train.batch, self.config.seed)
        self.amp = autocast(self.config, self.device)
        self.generator = torch.Generator(device=self.device)

    def __call__(self, step: int) -> dict[str, Tensor]:
        """Iteration `step` (0-based); returns `train_step`'s terms on this rank."""
        batch = load_batch(self.dataset, self.order, self.config, step, self.where, self.nets.G.z_dim, self.device)
        self.generator.manual_seed(stream_seed(self.config.seed, "step", step, self.where.rank))
        return train_step(self.nets, batch, self.config, self.generator, self.amp)
