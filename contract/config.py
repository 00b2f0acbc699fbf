"""One run's configuration: dataclasses, YAML load, `--set a.b=c` overrides, validation.

Defaults are the paper's recipe (AdamW betas (0, 0.99), batch 512, width-aware LR from 2e-4
at width 768, EMA 0.999, aR1/aR2 gamma 0.1, DiffAugment, MNG-exp with K=4). The resolved
config is written as plain YAML into every run folder, so a run folder alone says what ran.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from contract.errors import ConfigError
from contract import rundir
from contract.rundir import write_text_atomic
from contract.sizes import parse_size


@dataclass
class ModelConfig:
    """Generator and discriminator sizes. `name` (e.g. "GAT-B/2") fills width/depth/heads/patch;
    the d_* fields give the discriminator its own size (None: same as the generator).
    `d_cmap_dim` is the width of D's projection head and class embedding: 2048 in the paper at
    every size; tiny CPU studies shrink it, since its 2048x2048 class MLP would dwarf their D."""

    name: str | None = None
    width: int = 384
    depth: int = 12
    heads: int = 6
    patch: int = 2
    d_width: int | None = None
    d_depth: int | None = None
    d_heads: int | None = None
    d_cmap_dim: int = 2048
    z_dim: int = 64
    grad_checkpointing: bool = False


@dataclass
class MNGConfig:
    """Multi-level noise-perturbed image guidance. mode: exp | lin | msg | off."""

    mode: str = "exp"
    levels: int = 4
    i_min: float = 0.125
    offset: float = 0.01


@dataclass
class LossConfig:
    """Relativistic pairing loss plus R1/R2. penalty: approx (finite differences) | exact | none."""

    penalty: str = "approx"
    gamma: float = 0.1
    sigma: float = 0.01


@dataclass
class RepaConfig:
    """REPA-style alignment of D's tokens to a frozen vision encoder, on reals only.
    encoder: none | dinov2 | torchscript | tiny; source: a local path or hub id."""

    encoder: str = "none"
    source: str | None = None
    weight: float = 1.0
    projector_hidden: int = 2048


@dataclass
class AugmentConfig:
    """Latent DiffAugment. Probabilities / fractions as in the official code. color_means:
    official (saturation/contrast means of the clean tensor that drew the parameters, reused by
    G's other levels and the penalties' shifted copies) | per_tensor (recomputed from each tensor
    op by op, as the original DiffAugment); see gat/augment.py."""

    enabled: bool = True
    color_prob: float = 0.5
    translation: float = 0.125
    cutout: float = 0.5
    flip_prob: float = 0.4
    color_means: str = "official"


@dataclass
class TrainConfig:
    """Optimisation and the loop's schedule. Steps count D+G iterations."""

    batch: int = 512
    steps: int = 50_000
    lr_rule: str = "width_aware"
    base_lr: float = 2e-4
    base_width: int = 768
    d_lr_mult: float = 1.0  # D's LR = the rule's LR at D's width × this (G's LR is the rule's)
    # Collapse (docs/run_folder.md): FD above collapse_fd_ratio × its best so far at
    # collapse_patience evals in a row (0: never); collapse_stop ends the run there.
    collapse_fd_ratio: float = 1.1
    collapse_patience: int = 3
    collapse_stop: bool = True
    beta1: float = 0.0
    beta2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    w_avg_beta: float = 0.995
    precision: str = "auto"
    compile: bool = False
    log_every: int = 100
    ckpt_every: int = 1000
    snapshot_every: int = 10_000


@dataclass
class DataConfig:
    """kind: fashion_mnist (the embedded default) | latents (gatscale shards) | repa (GAT/REPA layout).
    vae: AutoencoderKL hub id or local path used to decode samples (None: the dataset's own)."""

    kind: str = "fashion_mnist"
    path: str | None = None
    vae: str | None = None
    num_workers: int = 0


@dataclass
class EvalConfig:
    """Fréchet distance on the EMA generator. extractor: inception | fmnist | none."""

    extractor: str = "fmnist"
    every: int = 2500
    num_samples: int = 5000
    ref_stats: str | None = None
    inception_path: str | None = None
    sample_psi: float = 0.3
    probe_batch: int = 16


@dataclass
class LoggingConfig:
    """How a run reports; every key is cosmetic (docs/wandb.md). wandb: off | offline | online
    (offline never needs a network); the other wandb_* keys go to `wandb.init` as they are
    (None: W&B's default), except that a run the sweep engine launches gets its grid's name as
    `wandb_group` unless the grid sets one. `grid_point` holds the run's grid coordinates
    ({axis: value}), filled in by the sweep engine and logged to the W&B run config."""

    wandb: str = "offline"
    wandb_project: str = "gatscale"
    wandb_entity: str | None = None
    wandb_group: str | None = None
    wandb_tags: list[str] = field(default_factory=list)
    wandb_job_type: str | None = None
    grid_point: dict[str, Any] = field(default_factory=dict)
    progress: str = "auto"


@dataclass
class RunConfig:
    """Everything one training run needs."""

    seed: int = 0
    device: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    mng: MNGConfig = field(default_factory=MNGConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    repa: RepaConfig = field(default_factory=RepaConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "mng.mode": ("exp", "lin", "msg", "off"),
    "loss.penalty": ("approx", "exact", "none"),
    "augment.color_means": ("official", "per_tensor"),
    "repa.encoder": ("none", "dinov2", "torchscript", "tiny"),
    "train.lr_rule": ("constant", "width_aware", "sqrt", "mup"),
    "train.precision": ("auto", "fp32", "bf16"),
    "data.kind": ("fashion_mnist", "latents", "repa"),
    "eval.extractor": ("inception", "fmnist", "none"),
    "logging.wandb": ("off", "offline", "online"),
    "logging.progress": ("auto", "bar", "lines"),
}
POSITIVE = (
    "model.width", "model.depth", "model.heads", "model.patch", "model.z_dim", "model.d_cmap_dim", "mng.levels",
    "train.batch", "train.steps", "train.base_lr", "train.base_width", "train.d_lr_mult", "train.log_every",
    "train.collapse_fd_ratio",
    "train.ckpt_every", "train.snapshot_every", "eval.every", "loss.sigma", "train.eps", "eval.probe_batch",
)
NON_NEGATIVE = ("train.collapse_patience", "loss.gamma", "repa.weight", "train.grad_clip", "train.weight_decay", "eval.num_samples",
                "data.num_workers")
OPTIONAL_POSITIVE = ("model.d_width", "model.d_depth", "model.d_heads")
MAX_SEED = 2**32 - 1  # numpy's legacy seeding and most samplers take 32-bit seeds
UNIT_INTERVAL = (
    "train.beta1", "train.beta2", "train.ema_decay", "train.w_avg_beta", "mng.i_min",
    "augment.color_prob", "augment.flip_prob", "augment.translation", "augment.cutout",
)


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 numbers: YAML 1.1 reads `1e-4` and `1.0e9` (no dot,
    or no exponent sign) as strings; users mean numbers, in a file as in `--set`. A key given
    twice in one mapping is an error: PyYAML keeps the last, so a second `train:` section would
    silently replace the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML text (numbers as YAML 1.2); errors become one-line ConfigErrors naming `where`."""
    try:
        return yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(err).split())}") from err


def read_yaml_file(path: str | Path) -> Any:
    """A YAML file's content; a missing, binary or malformed file is a ConfigError naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise ConfigError(f"file not found: {path}") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror})") from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a YAML text file (byte {err.start} is not UTF-8)") from err
    return load_yaml(text, str(path))


@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _plain_copy(data: Any) -> Any:
    """A deep copy of nested mappings and sequences (tuples become lists, as YAML would give)."""
    if isinstance(data, dict):
        return {key: _plain_copy(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain_copy(value) for value in data]
    return data


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a field annotation; ints are accepted for floats, nothing else."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {annotation}, got {value!r}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # `steps: 1.0e3` means 1000
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                # An inf LR or a NaN gamma would "diverge at step 1": a fake data point, not a run.
                raise ConfigError(f"{key}: must be a finite number, got {value!r}")
            return float(value)
    elif annotation is str:
        if isinstance(value, bool):
            # YAML 1.1 reads a bare `off`/`on` as a boolean; `mng.mode: off` means the string.
            return "on" if value else "off"
        if isinstance(value, str):
            return value
    elif annotation is Any:
        return value
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(annotation) or (Any,)
            return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return value
    else:
        raise ConfigError(f"{key}: unsupported annotation {annotation}")
    expected = getattr(origin, "__name__", None) or annotation.__name__
    raise ConfigError(f"{key}: expected {expected}, got {type(value).__name__} {value!r}")


def build_dataclass(cls: type, data: Any, where: str) -> Any:
    """`cls(**data)` with every field type-checked and unknown keys refused; errors name
    `where` (e.g. "executor") and the key."""
    return _build(cls, {} if data is None else data, f"{where}." if where else "")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = _field_types(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]} (allowed under {prefix or 'the top level'}: "
            f"{', '.join(sorted(hints))})"
        )
    kwargs = {}
    for name, section in _layout(cls):
        if name not in data:
            continue
        key = prefix + name
        if section is not None:
            kwargs[name] = _build(section, data[name], key + ".")
        else:
            kwargs[name] = _coerce(data[name], hints[name], key)
    return cls(**kwargs)


def to_dict(config: RunConfig) -> dict[str, Any]:
    """The config as plain nested dicts (what config.yaml holds)."""
    return dataclasses.asdict(config)


@functools.cache
def _layout(cls: type) -> tuple[tuple[str, type | None], ...]:
    """A config dataclass's fields in order, each with its section's class (None for a value)."""
    hints = _field_types(cls)
    return tuple((f.name, hints[f.name] if dataclasses.is_dataclass(hints[f.name]) else None)
                 for f in dataclasses.fields(cls))


@functools.cache
def _flat_fields(cls: type, prefix: str) -> tuple[tuple[str, str, type | None], ...]:
    """(field name, dotted key, section class or None) of each field under `prefix`. The keys are
    built once, so the flat configs of a large plan share them (new strings per run tripled its size)."""
    return tuple((name, prefix + name, section) for name, section in _layout(cls))


def to_flat(config: Any, prefix: str = "") -> dict[str, Any]:
    """A config (or one of its sections) as one dict of dotted keys in field order: what
    `flatten(to_dict(config))` gives, holding the config's own values instead of copies (a
    grid's plan derives one per point, and `asdict`'s deep copy would be most of its cost)."""
    out: dict[str, Any] = {}
    for name, key, section in _flat_fields(type(config), prefix):
        value = getattr(config, name)
        if section is None:
            out[key] = value
        else:
            out.update(to_flat(value, key + "."))
    return out


@functools.cache
def _value_keys() -> frozenset[str]:
    return frozenset(to_flat(RunConfig()))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one dict of dotted keys (the inverse of `unflatten`). A config key whose
    value is a mapping (`logging.grid_point`) stays one key: its own keys are data, not sections."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and prefix + key not in _value_keys():
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@functools.cache
def _key_path(cls: type, dotted: str) -> tuple[str, ...] | None:
    """The field names leading to `dotted` in config class `cls`, or None when there is no such
    key. Checked against the schema once per key: `validate` reads ~50 keys per config, and a
    grid's plan validates every point."""
    parts = tuple(dotted.split("."))
    node: Any = cls
    for part in parts:
        sections = dict(_layout(node)) if dataclasses.is_dataclass(node) else {}
        if part not in sections:
            return None
        node = sections[part]
    return parts


def get_value(config: RunConfig, dotted: str) -> Any:
    """Read `a.b` from a config; raises ConfigError naming the key if it does not exist."""
    parts = _key_path(type(config), dotted)
    if parts is None:
        raise ConfigError(f"unknown key {dotted}")
    node: Any = config
    for part in parts:
        node = getattr(node, part)
    return node


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of nested `data` with dotted keys set (`{"model.width": 512}`)."""
    out = _plain_copy(data or {})
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {dotted}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys back into nested mappings (`{"model.width": 8}` -> `{"model": {"width": 8}}`)."""
    return apply_overrides({}, flat)


def parse_set(items: list[str]) -> dict[str, Any]:
    """Parse CLI `key=value` strings; values are read as YAML scalars (`1e-4`, `true`, `null`)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        out[key.strip()] = load_yaml(raw, f"--set {item}") if raw else ""
    return out


def _resolve_model_name(data: dict[str, Any]) -> dict[str, Any]:
    """Fill width/depth/heads/patch from the registry when `model.name` is given."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping of sections (model, train, ...), got {data!r}")
    model = data.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError(f"model: expected a mapping of model keys (name, width, depth, ...), got {model!r}")
    name = model.get("name")
    if name is None:
        return data
    size = parse_size(name)
    for key in ("width", "depth", "heads", "patch"):
        given = model.get(key)
        wanted = getattr(size, key)
        if given is not None and given != wanted:
            raise ConfigError(f"model.{key}={given} contradicts model.name={name} ({key} {wanted})")
        model[key] = wanted
    data["model"] = model
    return data


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Validate nested dicts into a RunConfig; errors name the offending key."""
    data = _resolve_model_name(_plain_copy(data or {}))
    config = _build(RunConfig, data, "")
    validate(config)
    return config


def bundled_configs() -> Path:
    """The folder of trainer configs shipped inside the gat package (checkout or wheel)."""
    return Path(str(resources.files("gat").joinpath("configs")))


def find_bundled(folder: Path, name: str | Path, prefixes: tuple[str, ...] = (".",)) -> Path | None:
    """The YAML file of `folder` that `name` names: `NAME.yaml` or `NAME`, given bare or behind
    one of `prefixes` (a checkout-relative spelling such as `gat/configs/`), or None."""
    path = Path(name)
    if path.parent not in {Path(prefix) for prefix in prefixes}:
        return None
    return next((c for c in (folder / path.name, folder / f"{path.name}.yaml") if c.is_file()), None)


def bundled_names(folder: Path) -> str:
    """The YAML files of `folder`, for an error message that lists what could have been meant."""
    return ", ".join(sorted(p.name for p in folder.glob("*.yaml")))


def bundled_config(name: str | Path) -> Path | None:
    """The bundled config a bare name (`fmnist.yaml`, `fmnist`) or a checkout-relative
    `gat/configs/NAME.yaml` refers to, or None."""
    return find_bundled(bundled_configs(), name, prefixes=(".", "gat/configs"))


def resolve_config_path(name: str | Path) -> Path:
    """A trainer config file: the path as given when it exists, else the bundled config it names,
    so the same command works from any directory and from a wheel install."""
    path = Path(name)
    found = path if path.is_file() else bundled_config(name)
    if found is None:
        raise ConfigError(f"config file not found: {name} (bundled configs: {bundled_names(bundled_configs())})")
    return found


def load_base_config(base: Any, search: list[Path]) -> tuple[dict[str, Any], str]:
    """A sweep grid's ``base:`` as nested data, and where it came from (for messages): a mapping
    as it is ("inline"), none for the trainer's defaults ("defaults"), a path as given when
    absolute, else the first ``search`` folder that holds it, else the bundled config it names.
    ConfigError when it is none of these, is not found or does not read."""
    if base is None:
        return {}, "defaults"
    if isinstance(base, dict):
        return base, "inline"
    if not isinstance(base, str):
        raise ConfigError(f"base: expected a path or a mapping, got {base!r}")
    path = Path(base)
    tried = [path] if path.is_absolute() else [folder / path for folder in search]
    source = next((p for p in tried if p.is_file()), None) or bundled_config(base)
    if source is None:
        looked = ", ".join(str(p.parent) for p in tried)
        raise ConfigError(f"base config not found: {base} (looked in {looked} and among the bundled configs)")
    try:
        return read_yaml_file(source) or {}, str(source)
    except ConfigError as err:
        raise ConfigError(f"base: {err}") from err


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None) -> RunConfig:
    """Load a YAML file (a path, or a bundled config's name; the defaults when `path` is None)
    and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_file(resolve_config_path(path)) or {}
    if isinstance(overrides, list):
        overrides = parse_set(overrides)
    return from_dict(apply_overrides(data, overrides or {}))


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run folder recorded (its config.yaml)."""
    return load_config(Path(run_dir) / rundir.CONFIG)


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically: a half-written config never exists)."""
    write_text_atomic(Path(path), yaml.safe_dump(to_dict(config), sort_keys=False))


# Keys that change neither what a run computes nor its identity: how it is logged, how often it
# checkpoints, how data is loaded. A run may resume with new values (recorded in config.yaml),
# and the sweep engine leaves them out of the run id.
# Keys added after run ids were pinned: part of a run's identity only when set off their default,
# so adding them left every existing id as it was.
IDENTITY_IF_SET = ("train.d_lr_mult", "train.collapse_fd_ratio", "train.collapse_patience", "train.collapse_stop")
COSMETIC_KEYS = frozenset((
    *(f"logging.{f.name}" for f in dataclasses.fields(LoggingConfig)),  # all of them, new ones too
    "data.num_workers", "model.grad_checkpointing", "train.ckpt_every", "train.snapshot_every", "model.name",
))

# Sections whose keys are checked against each other (by `validate` and by building the model);
# a key outside them is valid or not on its own, whatever the other keys say.
INTERACTING_SECTIONS = ("model.", "mng.", "repa.", "data.")


def validate(config: RunConfig) -> None:
    """Range and choice checks that types alone cannot express."""
    for key, allowed in CHOICES.items():
        value = get_value(config, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of: {', '.join(allowed)}")
    for key in POSITIVE:
        if not get_value(config, key) > 0:
            raise ConfigError(f"{key} must be > 0, got {get_value(config, key)}")
    for key in NON_NEGATIVE:
        if get_value(config, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {get_value(config, key)}")
    for key in UNIT_INTERVAL:
        if not 0.0 <= get_value(config, key) <= 1.0:
            raise ConfigError(f"{key} must be in [0, 1], got {get_value(config, key)}")
    m = config.model
    for prefix, width, heads in (("model.", m.width, m.heads), ("model.d_", m.d_width or m.width, m.d_heads or m.heads)):
        if width % heads:
            raise ConfigError(f"{prefix}width={width} is not divisible by {prefix}heads={heads}")
        if (width // heads) % 4:
            raise ConfigError(f"{prefix}width/{prefix}heads={width // heads} must be a multiple of 4 (2-D RoPE)")
    if config.mng.mode != "off" and config.mng.levels < 2:
        raise ConfigError(f"mng.levels must be >= 2 when mng.mode={config.mng.mode}, got {config.mng.levels}")
    if config.mng.levels > m.depth:  # G keeps the level heads even with MNG off
        raise ConfigError(f"mng.levels={config.mng.levels} exceeds model.depth={m.depth}: each level needs a block")
    for key in OPTIONAL_POSITIVE:
        value = get_value(config, key)
        if value is not None and value <= 0:
            # 0 would silently fall back to G's value (`d_width or width`).
            raise ConfigError(f"{key} must be > 0 when set (leave it out for G's value), got {value}")
    if not 0 <= config.seed <= MAX_SEED:
        raise ConfigError(f"seed must be in [0, {MAX_SEED}], got {config.seed}")
    if config.eval.num_samples == 1:
        raise ConfigError("eval.num_samples must be 0 (no evaluation) or >= 2 (a covariance needs two samples), got 1")
    if config.train.compile and config.loss.penalty == "exact":
        # Found only after minutes of compiling otherwise, as a RuntimeError from inside autograd.
        raise ConfigError("train.compile=true cannot run loss.penalty=exact: the exact R1/R2 need a double "
                          "backward, which torch.compile's autograd does not support (use loss.penalty=approx "
                          "or train.compile=false)")
    if config.repa.encoder in ("dinov2", "torchscript") and not config.repa.source:
        raise ConfigError(f"repa.source is required for repa.encoder={config.repa.encoder} (a local path or hub id)")
    _validate_logging(config.logging)


def _validate_logging(logging: LoggingConfig) -> None:
    """Refuse here what `wandb.init` would refuse: there a refusal only disables W&B, after the
    run has started."""
    for name in ("wandb_project", "wandb_entity", "wandb_group", "wandb_job_type"):
        value = getattr(logging, name)
        if value is not None and not value.strip():
            raise ConfigError(f"logging.{name} is an empty string (leave it out for W&B's default)")
    for index, tag in enumerate(logging.wandb_tags):
        if not 1 <= len(tag) <= 64:
            raise ConfigError(f"logging.wandb_tags[{index}]={tag!r}: a W&B tag has 1 to 64 characters")
    for axis, value in logging.grid_point.items():
        values = value if isinstance(value, list) else [value]
        if not isinstance(axis, str) or not all(v is None or isinstance(v, (str, int, float, bool)) for v in values):
            raise ConfigError(f"logging.grid_point: expected {{axis name: value}} with plain values (as a grid's "
                              f"axes have), got {axis!r}: {value!r}")
