"""Grid files: parse, check and expand a sweep's YAML into points (dotted-key overrides).

A grid file (see `sweeps/configs/*.yaml`) has these sections; only `axes` or `zip` is needed:

```yaml
base: gat/configs/fmnist.yaml   # trainer config: a path (relative to this file, else a bundled gat/configs name) or a mapping
set: {train.steps: 2000}        # overrides applied to every point
axes:                           # product over these dotted config keys
  model.width: [32, 64]
  seed: [0, 1]
zip:                            # each group is zipped, then crossed with the other axes
  - {model.width: [384, 768], model.heads: [6, 12]}
include: [{model.width: [32, 64]}]   # keep only points matching one entry (optional)
exclude: [{model.width: 64, seed: 1}] # drop points matching any entry
resources: {...}                # see sweeps.resources
executor: {...}                 # see ExecutorSpec
budgets:                        # isoFLOP grid (optional): steps solved per point, see BudgetSpec
  flops: [1e13, 3e13]
  tolerance: 0.01
  eval_count: 8
```

A filter entry maps keys to a value, a list of allowed values, or a comparison string
(">=512", "<1e-3"). Checking here is structural (sections, keys, empty axes, zip lengths); each
point's values are checked by `contract.config.from_dict` in `validate_points`, and every error names
the axis and the value.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from contract import config as gat_config
from contract.errors import ConfigError, UserError

BUNDLED = Path(__file__).resolve().parent / "configs"
SECTIONS = ("name", "base", "set", "axes", "zip", "include", "exclude", "resources", "executor", "budgets")
EXECUTOR_KINDS = ("auto", "slurm", "local", "debug")
_COMPARISON = re.compile(r"^\s*(<=|>=|<|>|==|!=)\s*(\S+)\s*$")


class GridError(UserError, ValueError):
    """A grid file is malformed or one of its points is not a valid trainer config."""


@dataclass
class ExecutorSpec:
    """Where and how jobs run. `kind`: auto (slurm where a cluster answers, else local) | slurm |
    local | debug (in this process). `retries`: extra attempts of a run that failed with an
    error, inside its job. `max_requeues`: timeouts requeued per job (preemptions always are)."""

    kind: str = "auto"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 64
    setup: list[str] = field(default_factory=list)
    signal_delay_s: int = 120
    retries: int = 1
    max_requeues: int = 3
    snapshot_code: bool = False
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    lease_heartbeat_s: float = 30.0
    lease_stale_s: float = 120.0


@dataclass
class BudgetSpec:
    """An isoFLOP grid: every point is trained once per budget in `flops`, its `train.steps`
    solved so that its training FLOPs (as `contract.flops` counts them) lie within `tolerance` (a
    fraction) of the budget. A cell needing fewer than `min_steps` or more than `max_steps` is
    dropped. Each run evaluates `eval_count` times (`eval.every` follows the steps)."""

    flops: list[float]
    tolerance: float = 0.01
    min_steps: int = 100
    max_steps: int = 1_000_000
    eval_count: int = 8


@dataclass
class GridSpec:
    """A parsed grid file. `base` is the trainer config as plain nested data; `fixed` holds the
    `set:` overrides; `groups` are the product factors, each a list of {dotted key: value}."""

    name: str
    path: Path | None
    text: str
    base: dict[str, Any]
    base_source: str
    fixed: dict[str, Any]
    groups: list[list[dict[str, Any]]]
    axes: list[str]
    include: list[dict[str, Any]]
    exclude: list[dict[str, Any]]
    resources: dict[str, Any]
    executor: ExecutorSpec
    budgets: BudgetSpec | None = None


@dataclass(frozen=True)
class Point:
    """One grid point: `coords` are its axis values, `overrides` = `set:` plus coords."""

    coords: dict[str, Any]
    overrides: dict[str, Any]


def default_sweep_dir(name: str) -> Path:
    """`studies/<name>/` under the current directory: untracked in a gatscale checkout, so
    running a bundled grid never rewrites the committed `results/` (only
    scripts/reproduce_results.sh does, with --out)."""
    return Path("studies") / name


def resolve_grid_path(name: str | Path) -> Path:
    """A grid path as given, or a bare file name looked up in `sweeps/configs/`."""
    path = Path(name)
    found = path if path.is_file() else gat_config.find_bundled(BUNDLED, name)
    if found is None:
        raise GridError(f"grid file not found: {name} (bundled grids: {gat_config.bundled_names(BUNDLED)})")
    return found


def read_grid_file(source: str | Path) -> tuple[Path, str, Any]:
    """(path, text, parsed YAML) of a grid or search file; a bare name resolves to the bundle."""
    path = resolve_grid_path(source)
    try:
        data = gat_config.read_yaml_file(path)
    except ConfigError as err:
        raise GridError(str(err)) from err
    return path, path.read_text(), data or {}


def load_grid(source: str | Path, overrides: dict[str, Any] | None = None) -> GridSpec:
    """Read and structurally check a grid file; `overrides` (from `--set`) join its `set:`."""
    path, text, data = read_grid_file(source)
    return parse_grid(data, path=path, text=text, overrides=overrides)


def parse_grid(
    data: dict[str, Any], *, path: Path | None = None, text: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> GridSpec:
    """Build a GridSpec from already-loaded YAML data (what `load_grid` and tests use)."""
    if not isinstance(data, dict):
        raise GridError("a grid file must be a mapping of sections")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        hint = " (a search file: run it with python -m sweeps.tune)" if unknown[0] == "search" else ""
        raise GridError(f"unknown grid section {unknown[0]!r} (allowed: {', '.join(SECTIONS)}){hint}")
    try:  # relative to the grid file (cwd for a grid given as data), then the bundled configs
        base, base_source = gat_config.load_base_config(data.get("base"), [path.parent if path else Path.cwd()])
    except ConfigError as err:
        raise GridError(str(err)) from err
    fixed = {**_mapping(data.get("set"), "set"), **(overrides or {})}
    for key in fixed:
        _check_key(key, f"set: {key}")
    groups: list[list[dict[str, Any]]] = []
    axes: list[str] = []
    for key, values in _mapping(data.get("axes"), "axes").items():
        _check_key(key, f"axis {key}")
        values = _values(values, f"axis {key}")
        groups.append([{key: v} for v in values])
        axes.append(key)
    for index, group in enumerate(data.get("zip") or []):
        group = _mapping(group, f"zip[{index}]")
        lengths = {}
        for key, values in group.items():
            _check_key(key, f"zip axis {key}")
            lengths[key] = len(_values(values, f"zip axis {key}"))
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise GridError(f"zip[{index}]: axes have different lengths ({detail})")
        groups.append([dict(zip(group, combo)) for combo in zip(*group.values())])
        axes.extend(group)
    duplicated = sorted({a for a in axes if axes.count(a) > 1} | (set(axes) & set(fixed)))
    if duplicated:
        raise GridError(f"axis {duplicated[0]} is given more than once (axes, zip or set)")
    if not groups:
        raise GridError("a grid needs at least one axis under `axes:` or `zip:`")
    include = _filters(data.get("include"), "include")
    exclude = _filters(data.get("exclude"), "exclude")
    name = str(data.get("name") or (path.stem if path else "grid"))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise GridError(f"name: {name!r} is not a plain folder name (letters, digits, '.', '_', '-'); "
                        "use --out to write a sweep elsewhere")
    return GridSpec(
        name=name, path=path, text=text if text is not None else yaml.safe_dump(data, sort_keys=False),
        base=base, base_source=base_source, fixed=fixed, groups=groups, axes=axes,
        include=include, exclude=exclude, resources=_mapping(data.get("resources"), "resources"),
        executor=_executor(data.get("executor")), budgets=_budgets(data.get("budgets"), fixed, axes),
    )


def only_filter(only: str | None) -> Callable[[str, str], bool]:
    """`--only REGEX` as a test of (run name, run id): true when either matches, always true
    without a filter; a bad expression is a GridError."""
    if not only:
        return lambda name, run_id: True
    try:
        pattern = re.compile(only)
    except re.error as err:
        raise GridError(f"--only {only!r}: not a regular expression ({err}); e.g. 'w64' or 'w(32|64)-'") from err
    return lambda name, run_id: bool(pattern.search(name) or pattern.search(run_id))


def grid_points(spec: GridSpec) -> Iterator[Point]:
    """The grid's points in a stable order (product of groups, then include/exclude), one at a
    time: a dry run of a 10^6-point grid never holds them all."""
    found = False
    for combo in itertools.product(*spec.groups):
        coords: dict[str, Any] = {}
        for part in combo:
            coords.update(part)
        if spec.include and not any(matches(coords, f) for f in spec.include):
            continue
        if any(matches(coords, f) for f in spec.exclude):
            continue
        found = True
        yield Point(coords=coords, overrides={**spec.fixed, **coords})
    if not found:
        raise GridError("the grid has no points left after include/exclude")


def expand(spec: GridSpec) -> list[Point]:
    """All points of the grid (`grid_points` as a list)."""
    return list(grid_points(spec))


def matches(values: dict[str, Any], condition: dict[str, Any]) -> bool:
    """Whether `values` satisfies every key of a filter entry (missing keys never match)."""
    for key, wanted in condition.items():
        if key not in values or not value_matches(values[key], wanted):
            return False
    return True


def value_matches(value: Any, wanted: Any) -> bool:
    """One filter test: equality, membership in a list, or a comparison string like ">=512"."""
    if isinstance(wanted, list):
        return value in wanted
    if isinstance(wanted, str):
        found = _comparison(wanted)
        if found and isinstance(value, (int, float)) and not isinstance(value, bool):
            op, bound = found
            return {
                "<": value < bound, "<=": value <= bound, ">": value > bound,
                ">=": value >= bound, "==": value == bound, "!=": value != bound,
            }[op]
    return value == wanted


def _comparison(text: str) -> tuple[str, float] | None:
    """(operator, bound) of a filter string like ">=512", or None when it is not one."""
    found = _COMPARISON.match(text)
    if not found:
        return None
    try:
        return found.group(1), float(found.group(2))
    except ValueError:
        return None


def point_config(spec: GridSpec, point: Point) -> dict[str, Any]:
    """The point's trainer config as nested data (base + overrides), before validation."""
    return gat_config.apply_overrides(spec.base, point.overrides)


def run_config(spec: GridSpec, point: Point) -> gat_config.RunConfig:
    """The point's trainer config through `contract.config.from_dict` (defaults filled, values
    coerced to their fields' types, `model.name` resolved, validated): the one derivation the
    plan, the grid checks and the trainer share. An invalid point is a GridError naming its axes."""
    try:
        return gat_config.from_dict(point_config(spec, point))
    except ConfigError as err:
        raise GridError(f"{_describe(point.coords, str(err))}: {err}") from err


def validate_points(spec: GridSpec, points: list[Point]) -> dict[int, gat_config.RunConfig]:
    """Check that every point is a valid trainer config; the first error names its axis and value.

    Single axis values are checked first (over the base config) so that a bad value is blamed on
    its own axis rather than on whichever combination happened to be expanded first. Returns
    the validated config of one representative point (by index) per distinct combination of the
    interacting keys (`contract.config.INTERACTING_SECTIONS`).
    """
    try:
        gat_config.from_dict(gat_config.apply_overrides(spec.base, spec.fixed))
    except ConfigError as err:
        raise GridError(f"base config ({spec.base_source}) with set: {err}") from err
    for group in spec.groups:
        for part in group:
            run_config(spec, Point(part, {**spec.fixed, **part}))
    # Every key was checked on its own above; what is left are the checks between keys (width
    # vs heads, MNG levels, REPA source, the model build), so each distinct combination of the
    # keys they read is validated once: a 10^5-point grid over seeds and LRs costs a few configs.
    representatives: dict[int, gat_config.RunConfig] = {}
    seen: set[str] = set()
    for index, point in enumerate(points):
        interacting = {k: v for k, v in point.overrides.items() if k.startswith(gat_config.INTERACTING_SECTIONS)}
        key = repr(sorted(interacting.items(), key=lambda item: item[0]))
        if key in seen:
            continue
        seen.add(key)
        representatives[index] = run_config(spec, point)
    return representatives


def _describe(coords: dict[str, Any], message: str) -> str:
    """Name the axes an error is about: those whose key the message mentions, else all."""
    named = {k: v for k, v in coords.items() if k in message} or coords
    return ", ".join(f"axis {k}={v!r}" for k, v in named.items())


def _check_key(key: str, where: str) -> None:
    try:
        gat_config.get_value(gat_config.RunConfig(), key)
    except ConfigError as err:
        raise GridError(f"{where}: unknown config key {key!r} ({err})") from err


def _values(values: Any, where: str) -> list[Any]:
    if not isinstance(values, list):
        raise GridError(f"{where}: expected a list of values, got {values!r}")
    if not values:
        raise GridError(f"{where}: empty axis (give at least one value)")
    return values


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GridError(f"{where}: expected a mapping, got {value!r}")
    return value


def _filters(value: Any, where: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise GridError(f"{where}: expected a list of mappings, got {value!r}")
    for entry in value:
        for key, wanted in entry.items():
            if isinstance(wanted, str) and wanted.lstrip()[:1] in ("<", ">", "=", "!") and _comparison(wanted) is None:
                raise GridError(f"{where}: {key}: {wanted!r} is not a comparison (expected e.g. '>=512', '<1e-3', '!=0')")
    return value


def _budgets(value: Any, fixed: dict[str, Any], axes: list[str]) -> BudgetSpec | None:
    """The `budgets:` section checked: positive budgets, a tolerance in (0, 1), sane step limits,
    and no `train.steps` or `eval.every` elsewhere (the planner sets both)."""
    if value is None:
        return None
    rest = dict(_mapping(value, "budgets"))
    flops = rest.pop("flops", None)
    try:
        # YAML 1.1 reads `1e13` (no dot) as a string, so numbers are taken from text as well
        flops = [float(f) for f in flops if not isinstance(f, bool)] if isinstance(flops, list) else []
    except (TypeError, ValueError):
        flops = []
    if not flops or min(flops) <= 0 or len(flops) != len(value["flops"]):
        raise GridError(f"budgets.flops: expected a non-empty list of positive FLOP counts, got {value.get('flops')!r}")
    try:
        spec = gat_config.build_dataclass(BudgetSpec, {**rest, "flops": []}, "budgets")
    except ConfigError as err:
        raise GridError(str(err)) from err
    spec.flops = sorted(set(flops))
    if not 0 < spec.tolerance < 1:
        raise GridError(f"budgets.tolerance must be a fraction in (0, 1), got {spec.tolerance!r}")
    if not 1 <= spec.min_steps <= spec.max_steps:
        raise GridError(f"budgets.min_steps and budgets.max_steps need 1 <= min_steps <= max_steps, "
                        f"got {spec.min_steps} and {spec.max_steps}")
    if spec.eval_count < 1:
        raise GridError(f"budgets.eval_count must be >= 1, got {spec.eval_count}")
    for key in ("train.steps", "eval.every"):
        if key in fixed or key in axes:
            raise GridError(f"budgets: {key} is solved from the budget; remove it from set/axes/zip")
    return spec


def _executor(value: Any) -> ExecutorSpec:
    try:
        spec = gat_config.build_dataclass(ExecutorSpec, _mapping(value, "executor"), "executor")
    except ConfigError as err:
        raise GridError(str(err)) from err
    if spec.kind not in EXECUTOR_KINDS:
        raise GridError(f"executor.kind={spec.kind!r} is not one of: {', '.join(EXECUTOR_KINDS)}")
    if spec.array_parallelism < 1:
        raise GridError(f"executor.array_parallelism must be >= 1, got {spec.array_parallelism}")
    if spec.retries < 0 or spec.max_requeues < 0:
        raise GridError("executor.retries and executor.max_requeues must be >= 0")
    return spec
