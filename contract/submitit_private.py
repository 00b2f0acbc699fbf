"""submitit's private functions gatscale relies on, in one place: no other module names them, and
`tests/test_private_apis.py` runs `check` against the installed submitit, so a release that moves
one fails there, naming it, instead of at submission on a cluster.

- `_make_sbatch_string`: the sbatch script for a set of parameters. `sweeps.executors.sbatch_text`
  renders it for the golden test; the public route, a `SlurmExecutor`, refuses to exist without
  `srun` on PATH and writes files to submit.
- `_convert_mem`: GB as sbatch's `--mem` value ("240GB", "1536MB"). Its public twin, the `mem_gb`
  parameter, is converted only by `AutoExecutor`; gatscale configures a `SlurmExecutor` in sbatch's
  own names (and renders the golden script from the same dict), so it converts here.
- `_parse_node_list`: SLURM's compact host list ("gpu[01-03,07]") as host names, the fallback of
  `gat.distributed.expand_nodelist` where `scontrol` is not installed. The public
  `JobEnvironment().hostnames` parses only the current job's own `SLURM_JOB_NODELIST`.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

import submitit
from submitit.slurm import slurm as _slurm

PINNED = "submitit>=1.5,<1.6"  # pyproject's pin, which tests/test_private_apis.py holds to this
# The sbatch parameters sweeps.executors.slurm_parameters passes, by submitit's names.
SBATCH_PARAMETERS = ("job_name", "time", "nodes", "ntasks_per_node", "cpus_per_task", "array_parallelism",
                     "signal_delay_s", "setup", "additional_parameters", "gpus_per_node", "mem", "partition",
                     "account", "qos", "constraint")


def moved(api: str, how: str = "is gone") -> str:
    """The error text when a private API changed: what, in which release, and the pin it was written for."""
    return (f"submitit.slurm.slurm.{api} {how} in submitit {submitit.__version__}; contract/submitit_private.py "
            f"is written for {PINNED} (pyproject's pin): adapt it there, or install a submitit in that range")


def _private(name: str) -> Callable[..., Any]:
    found = getattr(_slurm, name, None)
    if not callable(found):
        raise RuntimeError(moved(name))
    return found


def convert_mem(mem_gb: float) -> str:
    """`mem_gb` as sbatch's `--mem` value, as submitit writes it: "240GB", or "1536MB" for 1.5."""
    return _private("_convert_mem")(mem_gb)


def sbatch_string(command: str, folder: Path, map_count: int | None, **params: Any) -> str:
    """The sbatch script submitit writes for `params` (its SlurmExecutor names) running `command`
    in an array of `map_count` tasks."""
    return _private("_make_sbatch_string")(command=command, folder=folder, map_count=map_count, **params)


def parse_node_list(nodelist: str) -> list[str]:
    """SLURM's compact host list as host names, in order ("node[1-2]-ib" -> node1-ib, node2-ib)."""
    return list(_private("_parse_node_list")(nodelist))


def check() -> None:
    """Raise RuntimeError, naming the API, when the installed submitit no longer has one of these
    functions as gatscale calls it (name, parameters, and results on known inputs)."""
    accepted = set(inspect.signature(_private("_make_sbatch_string")).parameters)
    missing = sorted({"command", "folder", "map_count", *SBATCH_PARAMETERS} - accepted)
    if missing:
        raise RuntimeError(moved("_make_sbatch_string", f"no longer takes {', '.join(missing)}"))
    if (convert_mem(240), convert_mem(1.5)) != ("240GB", "1536MB"):
        raise RuntimeError(moved("_convert_mem", "formats memory differently"))
    if parse_node_list("gpu[01-02,07],login1") != ["gpu01", "gpu02", "gpu07", "login1"]:
        raise RuntimeError(moved("_parse_node_list", "parses host lists differently"))
