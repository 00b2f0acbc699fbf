"""What every gatscale command line shares (docs/cli.md): `--version`, one-line errors, exit codes.

A user error (a bad flag, a missing file, a config that does not validate) prints one line
`error: ...` on stderr and exits 2, with no traceback; a failure of the environment (a full
disk) prints one line and exits 1; a bug still shows its traceback. Under torchrun only rank 0
prints, so N ranks do not print N copies of every line.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from contract import __version__
from contract.errors import UserError


def is_rank_zero() -> bool:
    """True unless this process is a non-zero rank of a torchrun/SLURM multi-process job."""
    return int(os.environ.get("RANK", "0")) == 0


def say(*parts: object, file=None, end: str = "\n") -> None:
    """print() on rank 0 only (stdout unless `file`), flushed so logs interleave in order."""
    if is_rank_zero():
        print(*parts, file=file or sys.stdout, end=end, flush=True)


def device(name: str):
    """`auto` (a GPU when there is one, else the CPU), `cpu` or `cuda[:N]` as a torch.device."""
    import torch  # not at import time: `--help` and `--version` should not wait for torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"device {name!r}: expected auto, cpu or cuda[:N] ({err})") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r}: this machine has no CUDA GPU (use --device cpu or auto)")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise UserError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return chosen


class Parser(argparse.ArgumentParser):
    """argparse with the shared conventions: `python -m MODULE` as prog, `--version`, and
    usage errors as one `error:` line with exit 2."""

    def __init__(self, module: str, doc: str | None, **kwargs) -> None:
        summary = (doc or "").strip().split("\n\n")[0]
        super().__init__(prog=f"python -m {module}", description=summary, **kwargs)
        self.add_argument("--version", action="version", version=f"gatscale {__version__}",
                          help="print gatscale's version and exit")

    def error(self, message: str) -> NoReturn:
        say(f"error: {message} (try {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def run(body: Callable[[], int]) -> int:
    """Call a CLI's body and map its exceptions onto the shared exit codes.

    UserError (which every project validation error subclasses) and a missing file →
    `error:` line, 2. Other OSError (disk full, read-only folder) → `error:` line, 1.
    Anything else is a bug → traceback, 1.
    """
    try:
        return body()
    except KeyboardInterrupt:
        say("error: interrupted", file=sys.stderr)
        return 130
    except (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as err:
        say(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        notes = "; ".join(getattr(err, "__notes__", []))
        say(f"error: {err.strerror or err}{where}" + (f"; {notes}" if notes else ""), file=sys.stderr)
        return 1
    except Exception:  # a bug: keep the evidence
        traceback.print_exc()
        return 1


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    if isinstance(err, OSError) and err.strerror and err.filename:  # not "[Errno 2] ...: 'x'"
        text = f"{err.strerror}: {err.filename}"
    return " ".join(text.split())
