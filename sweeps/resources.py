"""Per-run resources as a function of model size: defaults plus first-match rules.

```yaml
resources:
  gpus: 1            # per node; the job starts one task per GPU (DDP from SLURM task variables)
  nodes: 1
  cpus_per_task: 8
  mem_gb: 64
  timeout_min: 240
  rules:             # first match wins and overrides the fields it names
    - when: {params: ">=3e8"}          # G+D parameters (contract.model_shape.describe)
      gpus: 4
    - when: {model.width: [768, 1024]} # any dotted config key; value, list, or comparison
      timeout_min: 1440
  estimate: {device_tflops: 312, mfu: 0.3}   # throughput assumed by --dry-run's GPU-hours
  pack: {runs_per_job: 4}   # 4 runs share one job (default 1); rules may set it too
```
Runs with equal resources form one array job.

Packing (`pack.runs_per_job: N` > 1) puts N runs of equal resources into one job, which runs them
side by side. The job's resources are then the pack's in total: `cpus_per_task` is split among
its runs (each run gets `cpus_per_task // N` threads; so a grid that ran one thread per run asks
`cpus_per_task: N` to keep each run's numbers bit for bit), and `gpus` is either 1 (the N runs
share it) or N (one each, through CUDA_VISIBLE_DEVICES). `check_pack` refuses the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from collections.abc import Iterable
from typing import Any, Callable, TypeVar

from contract import config as gat_config
from contract.errors import ConfigError
from sweeps.spec import GridError, value_matches

T = TypeVar("T")
DERIVED = ("params", "gflops")  # rule keys computed from contract.model_shape.describe


@dataclass(frozen=True)
class Resources:
    """What one run's job asks the scheduler for."""

    gpus: int = 0
    nodes: int = 1
    cpus_per_task: int = 1
    mem_gb: float | None = None
    timeout_min: int = 60
    pack: int = 1  # runs per job (`pack: {runs_per_job: N}`); with N > 1 the fields above are the job's


@dataclass(frozen=True)
class Pack:
    """The grid's `pack:` mapping: how many runs of equal resources share one job."""

    runs_per_job: int = 1


@dataclass(frozen=True)
class Estimate:
    """Assumed sustained throughput per device, for GPU-hour estimates."""

    device_tflops: float = 312.0
    mfu: float = 0.3


_FIELDS = {f.name for f in fields(Resources)} - {"pack"}  # `pack` is written as a mapping


def parse(section: dict[str, Any]) -> tuple[Resources, list[tuple[dict[str, Any], dict[str, Any]]], Estimate]:
    """Check a `resources:` section; returns defaults, rules (condition, changes), estimate."""
    extra = set(section) - _FIELDS - {"rules", "estimate", "pack"}
    if extra:
        raise GridError(f"resources: unknown key {sorted(extra)[0]!r} (allowed: {', '.join(sorted(_FIELDS))}, "
                        "pack, rules, estimate)")
    defaults = _checked(Resources, _fields_of({k: v for k, v in section.items() if k in _FIELDS | {"pack"}},
                                              "resources"), "resources")
    check_pack(defaults, "resources")
    rules = []
    for index, rule in enumerate(section.get("rules") or []):
        where = f"resources.rules[{index}]"
        if not isinstance(rule, dict) or not isinstance(rule.get("when"), dict):
            raise GridError(f"{where}: expected a mapping with a `when:` mapping")
        changes = _fields_of({k: v for k, v in rule.items() if k != "when"}, where)
        _checked(Resources, changes, where)
        # a rule's runs get the defaults' fields it leaves alone: check the pack they make
        check_pack(replace(defaults, **changes), where)
        rules.append((rule["when"], changes))
    estimate = _checked(Estimate, section.get("estimate"), "resources.estimate")
    return defaults, rules, estimate


def _fields_of(section: dict[str, Any], where: str) -> dict[str, Any]:
    """A section's Resources fields, with `pack: {runs_per_job: N}` read into the field `pack`."""
    out = {k: v for k, v in section.items() if k != "pack"}
    if "pack" in section:
        pack = _checked(Pack, section["pack"], f"{where}.pack")
        if pack.runs_per_job < 1:
            raise GridError(f"{where}.pack.runs_per_job: {pack.runs_per_job!r} is out of range (must be >= 1)")
        out["pack"] = pack.runs_per_job
    return out


def check_pack(res: Resources, where: str) -> None:
    """Refuse a pack its job cannot hold (GridError naming the key, under `where`): more runs than
    cores, GPUs that neither one run per GPU nor one shared GPU would use, multi-GPU (DDP) runs."""
    n = res.pack
    if n == 1:
        return
    key = f"{where}.pack.runs_per_job"
    if res.nodes > 1:
        raise GridError(f"{key}: {n} packs multi-node (DDP) runs (nodes={res.nodes}); packing takes single-device runs only")
    if res.gpus > n:
        raise GridError(f"{key}: {n} runs on {res.gpus} GPUs would make each a multi-GPU (DDP) run; packing takes "
                        f"single-GPU runs only (gpus: {n} for one GPU each, or gpus: 1 to share one)")
    if 1 < res.gpus < n:
        raise GridError(f"{key}: {n} runs is more than the job's {res.gpus} GPUs allow (gpus: {n} for one GPU "
                        "each, or gpus: 1 to share one)")
    if res.cpus_per_task < n:
        raise GridError(f"{key}: {n} runs is more than the job's cpus_per_task={res.cpus_per_task} cores allow "
                        "(each run needs a core: cpus_per_task is the pack's total)")


def packs(items: Iterable[tuple[T, Resources]]) -> list[tuple[Resources, list[list[T]]]]:
    """The jobs `items` make, per resource group in order of first appearance: each group cut, in
    the order given, into packs of its `pack` runs (the last may be smaller). A pack's runs have
    equal resources by construction, so runs of mixed needs never share a job; a caller wanting
    similar durations within a pack orders `items` by cost (the launcher: longest first)."""
    groups: dict[Resources, list[T]] = {}
    for item, res in items:
        groups.setdefault(res, []).append(item)
    return [(res, [group[i:i + res.pack] for i in range(0, len(group), res.pack)]) for res, group in groups.items()]


def _checked(cls: type, data: Any, where: str) -> Any:
    """`cls` from `data` with types checked, counts at least 0 and rates above 0."""
    try:
        value = gat_config.build_dataclass(cls, data, where)
    except ConfigError as err:
        raise GridError(str(err)) from err
    for item in fields(value):
        number = getattr(value, item.name)
        if isinstance(number, (int, float)) and (number <= 0 if isinstance(number, float) else number < 0):
            raise GridError(f"{where}.{item.name}: {number!r} is out of range (must be {'> 0' if isinstance(number, float) else '>= 0'})")
    return value


def resolve(
    flat: dict[str, Any], defaults: Resources, rules: list[tuple[dict[str, Any], dict[str, Any]]],
    stats: Callable[[], dict[str, float]] | None = None,
) -> Resources:
    """A run's resources: the first rule whose every condition holds, over the defaults.

    `stats` lazily gives {"params", "gflops"} for rules that need them.
    """
    derived: dict[str, float] | None = None
    for when, changes in rules:
        ok = True
        for key, wanted in when.items():
            if key in DERIVED:
                if derived is None:
                    derived = stats() if stats else {}
                value = derived.get(key)
            elif key in flat:
                value = flat[key]
            else:
                raise GridError(f"resources rule key {key!r} is neither a config key nor one of {DERIVED}")
            if value is None or not value_matches(value, wanted):
                ok = False
                break
        if ok:
            return replace(defaults, **changes)
    return defaults
