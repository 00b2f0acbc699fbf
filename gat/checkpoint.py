"""Atomic checkpoints with one previous copy to fall back on, and the RNG state for exact resume.

Layout under RUN_DIR/checkpoints/: `latest.pt`, `previous.pt`, and periodic `step-XXXXXXX.pt`
snapshots (copies of their own, so damage to the rolling files never reaches them). A save writes a temp
file, fsyncs it, demotes `latest` to `previous` and renames the temp file into place, so a kill
at any instant leaves at least one complete checkpoint behind.

Each file carries the SHA-256 of its own content (`content_sha256`: every tensor's bytes, dtype
and shape, and every other value, walked in key order), so it is written atomically with the
data it vouches for. Loading recomputes it: bytes damaged in place (garbage or zeros that still
unpickle) are treated like a torn file, never resumed from. Files are unpickled with
`weights_only=True` and only the numpy types the RNG state needs allowed, so a planted file on a
shared filesystem cannot run code before (or instead of) the hash check.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.errors import UserError

LATEST = "latest.pt"
PREVIOUS = "previous.pt"
REQUIRED_KEYS = ("step", "G", "D", "G_ema", "opt_g", "opt_d", "rng")
DIGEST_KEY = "content_sha256"


# numpy's RNG state (a uint32 array) is the only non-torch object a checkpoint holds.
SAFE_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


class CorruptCheckpoint(ValueError):
    """A checkpoint whose content does not match the hash stored in it."""


class NoVerifiedCheckpoint(UserError):
    """Checkpoint files exist but none verifies, or the run recorded one that is gone: resuming
    would silently restart."""

    def __init__(self, tried: Sequence[Path], why: str | None = None):
        self.tried = list(tried)
        super().__init__(why or f"no checkpoint verifies (tried {', '.join(str(p) for p in self.tried)})")


def snapshot_name(step: int) -> str:
    return f"step-{step:07d}.pt"


def rng_state() -> dict[str, Any]:
    """Every global RNG a step may draw from: python, numpy, torch CPU and all CUDA devices."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured (CUDA states only when the device count matches)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(directory: Path, state: dict[str, Any], *, snapshot: bool = False) -> Path:
    """Write `state` as the new latest checkpoint (and a step snapshot when asked)."""
    directory.mkdir(parents=True, exist_ok=True)
    latest, previous = directory / LATEST, directory / PREVIOUS
    tmp = directory / f".{LATEST}.tmp"
    try:
        with open(tmp, "wb") as handle:
            torch.save({**state, DIGEST_KEY: content_digest(state)}, handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a kill mid-write leaves no stray .tmp
        raise
    if latest.exists():
        os.replace(latest, previous)
    os.replace(tmp, latest)
    _fsync_dir(directory)
    if snapshot:
        # A copy, not a hard link: damage to latest/previous must not reach the run's history.
        target = directory / snapshot_name(int(state["step"]))
        tmp_snapshot = directory / f".{target.name}.tmp"
        try:
            shutil.copyfile(latest, tmp_snapshot)
            os.replace(tmp_snapshot, target)
        finally:
            tmp_snapshot.unlink(missing_ok=True)
    return latest


def _fsync_dir(directory: Path) -> None:
    # Makes the renames themselves durable across a power loss, not just the file contents.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def content_digest(state: Any) -> str:
    """SHA-256 over a checkpoint's content: tensors and arrays by dtype, shape and raw bytes,
    mappings in sorted key order, everything else by repr (RNG tuples, numbers, strings)."""
    digest = hashlib.sha256()

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(value, np.ndarray):
            digest.update(f"A{value.dtype}{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).view(np.uint8).reshape(-1))
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}".encode())
            for key in sorted(value, key=repr):
                digest.update(repr(key).encode())
                visit(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"L{len(value)}".encode())
            for item in value:
                visit(item)
        else:
            digest.update(f"V{value!r}".encode())

    visit(state)
    return digest.hexdigest()


def _read(path: Path) -> dict[str, Any]:
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise ValueError(f"{path.name} is not a gatscale checkpoint (missing keys)")
    stored = state.pop(DIGEST_KEY, None)
    if stored is None:
        warnings.warn(f"{path} has no content hash (written before gatscale verified checkpoints); loaded unverified")
    elif stored != content_digest(state):
        raise CorruptCheckpoint(f"{path} does not match its content hash: its bytes were damaged after writing")
    return state


def load_latest(directory: Path) -> dict[str, Any] | None:
    """The newest verified checkpoint: latest, else previous, else the step snapshots newest
    first (with a warning naming what was skipped); None when there is no checkpoint file.

    A truncated, corrupt, damaged or foreign file is skipped and never resumed from: losing
    `ckpt_every` steps beats training on from bad bytes. When files exist but none verifies,
    raises NoVerifiedCheckpoint rather than let the caller silently start over.
    """
    snapshots = sorted(directory.glob("step-*.pt"), reverse=True) if directory.is_dir() else []
    tried = [path for path in [directory / LATEST, directory / PREVIOUS, *snapshots] if path.is_file()]
    for path in tried:
        try:
            state = _read(path)
        except Exception as err:  # torch raises several types for a torn zip archive
            warnings.warn(f"checkpoint {path} is unreadable ({type(err).__name__}: {err}); trying an older one")
            continue
        if path.name != LATEST:
            warnings.warn(f"resuming from {path} (step {state['step']}) because {LATEST} was missing or corrupt")
        return state
    if tried:
        raise NoVerifiedCheckpoint(tried)
    return None


def load_for_inference(run_dir: Path, step: int | None = None) -> dict[str, Any]:
    """A run's checkpoint for sampling: the step snapshot if `step` is given, else the newest."""
    directory = Path(run_dir) / "checkpoints"
    if step is not None:
        path = directory / snapshot_name(step)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint {path}")
        try:
            return _read(path)
        except Exception as err:
            raise NoVerifiedCheckpoint([path]) from err
    state = load_latest(directory)
    if state is None:
        raise FileNotFoundError(f"no readable checkpoint in {directory}")
    return state
