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
```
Runs with equal resources form one array job.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable

from contract import config as gat_config
from contract.errors import ConfigError
from sweeps.spec import GridError, value_matches

DERIVED = ("params", "gflops")  # rule keys computed from contract.model_shape.describe


@dataclass(frozen=True)
class Resources:
    """What one run's job asks the scheduler for."""

    gpus: int = 0
    nodes: int = 1
    cpus_per_task: int = 1
    mem_gb: float | None = None
    timeout_min: int = 60


@dataclass(frozen=True)
class Estimate:
    """Assumed sustained throughput per device, for GPU-hour estimates."""

    device_tflops: float = 312.0
    mfu: float = 0.3


_FIELDS = {f.name for f in fields(Resources)}


def parse(section: dict[str, Any]) -> tuple[Resources, list[tuple[dict[str, Any], dict[str, Any]]], Estimate]:
    """Check a `resources:` section; returns defaults, rules (condition, changes), estimate."""
    extra = set(section) - _FIELDS - {"rules", "estimate"}
    if extra:
        raise GridError(f"resources: unknown key {sorted(extra)[0]!r} (allowed: {', '.join(sorted(_FIELDS))}, rules, estimate)")
    defaults = _checked(Resources, {k: v for k, v in section.items() if k in _FIELDS}, "resources")
    rules = []
    for index, rule in enumerate(section.get("rules") or []):
        if not isinstance(rule, dict) or not isinstance(rule.get("when"), dict):
            raise GridError(f"resources.rules[{index}]: expected a mapping with a `when:` mapping")
        changes = {k: v for k, v in rule.items() if k != "when"}
        _checked(Resources, changes, f"resources.rules[{index}]")
        rules.append((rule["when"], changes))
    estimate = _checked(Estimate, section.get("estimate"), "resources.estimate")
    return defaults, rules, estimate


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
