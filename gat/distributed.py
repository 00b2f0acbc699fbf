"""Data-parallel training across processes: torchrun or SLURM tasks, one process per device.

Each rank holds full copies of G and D, computes its slice of the global batch and averages
gradients with one flattened all-reduce per optimiser step (as StyleGAN2-ADA/EDM do) instead
of wrapping the models in `DistributedDataParallel`: a GAN step runs D several times per
backward (reals, fakes, the penalties' shifted copies) and runs D inside G's loss, patterns
DDP's reducer handles badly, while a plain all-reduce is indifferent to how the graph was
built. Only rank 0 writes files.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable

import torch
import torch.distributed as dist
from torch import Tensor

# Rank 0 may evaluate for minutes while the others wait in a barrier.
_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global rank, world size and rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compact host list ("gpu[01-03,07],login1", "node[1-2]-ib", "rack[1-2]-n[01-02]")
    as host names, in order: by `scontrol show hostnames` where SLURM is installed (the
    scheduler's own parser), else by submitit's (a private API: `contract.submitit_private`)."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
            if out.returncode == 0 and out.stdout.split():
                return out.stdout.split()
        except (OSError, subprocess.SubprocessError):
            pass
    from contract.submitit_private import parse_node_list

    return parse_node_list(nodelist)


def detect(environ: dict[str, str] | None = None) -> DistEnv:
    """Rank and world size from torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or SLURM task variables.

    torchrun wins when both are present (torchrun inside an sbatch script). A single SLURM
    task, or no launcher at all, is a world of one.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env and "RANK" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return DistEnv()


def init(device_kind: str, environ: dict[str, str] | None = None) -> DistEnv:
    """Join the process group when launched on several ranks (nccl on CUDA, gloo on CPU).

    Under SLURM without torchrun, MASTER_ADDR defaults to the job's first host and MASTER_PORT
    to a port derived from the job id, so concurrent jobs on one node do not collide.
    """
    env = os.environ if environ is None else environ
    where = detect(env)
    if not where.enabled or dist.is_initialized():
        return where
    if "MASTER_ADDR" not in env and "SLURM_JOB_NODELIST" in env:
        os.environ["MASTER_ADDR"] = expand_nodelist(env["SLURM_JOB_NODELIST"])[0]
    if "MASTER_PORT" not in env:
        os.environ["MASTER_PORT"] = str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
    if device_kind == "cuda":
        torch.cuda.set_device(where.local_rank)
    dist.init_process_group(
        backend="nccl" if device_kind == "cuda" else "gloo",
        init_method="env://",
        rank=where.rank,
        world_size=where.world_size,
        timeout=_TIMEOUT,
    )
    return where


def shutdown() -> None:
    """Leave the process group (no-op when none was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def average_gradients(params: Iterable[Tensor]) -> None:
    """Average `.grad` over ranks in one flattened all-reduce (params without a grad count as 0)."""
    if not dist.is_initialized():
        return
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g)
        offset += g.numel()


def all_mean(values: Tensor) -> Tensor:
    """The mean of a tensor over ranks (a copy; the input is left alone)."""
    if not dist.is_initialized():
        return values
    out = values.clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def all_gather_cat(x: Tensor) -> Tensor:
    """Concatenate equal-shaped per-rank tensors along dim 0 in rank order (the global batch)."""
    if not dist.is_initialized():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)
