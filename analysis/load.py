"""Run folders and sweep folders → one tidy table (one row per run × eval step).

The input is the contract in ``docs/run_folder.md``; nothing here imports the trainer. Columns:

* identity: ``run_id``, ``sweep`` (sweep folder name, empty for bare runs), ``run_dir``;
* every grid coordinate of the sweep manifest (column = axis name, as written in the grid);
* the resolved config: ``model`` (``model.name``, else ``wW-dD-hH-pP``), ``model.width``,
  ``model.depth``, ``model.heads``, ``model.patch``, ``model.d_width``, ``model.d_depth``,
  ``train.batch``, ``train.lr_rule``, ``train.base_lr``, ``train.base_width``, ``mng.mode``,
  ``loss.penalty``, ``seed``;
* size and cost: ``g_params``, ``d_params``, ``g_gflops``, ``d_gflops`` (from ``model.json``;
  GFLOPs in the DiT convention, see ``contract.flops``), the plot aliases ``params`` (= G params)
  and ``gflops`` (= G GFLOPs), ``train_flops`` (cumulative G+D training FLOPs at that row);
* outcome: ``status`` (completed | diverged | collapsed | failed | running | pending | unknown),
  ``reason``, ``diverged_step`` (the step a diverged or collapsed run stopped being healthy);
* per eval row: ``step``, ``images_seen``, ``wall_s``, ``gpu_hours`` (single-device runs:
  wall-clock hours), ``loss_d``, ``loss_g`` and one column per metric (``fid50k``, ``fid5k_train``, ``fd_fmnist``…; see contract.metric_names).

A run with no eval row (diverged or failed early, or not started) still gets one row, at its
last known step with the metrics NaN, so nothing is dropped silently.
"""
from __future__ import annotations

import functools
import gc
import io
import json
import operator
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from contract import rundir
from contract.config import from_dict
from contract.errors import UserError
from contract.flops import training_flops_per_image
from contract.metric_names import is_metric, metric_rank
from contract.model_shape import describe_run
CONFIG_COLUMNS = (
    "model.width", "model.depth", "model.heads", "model.patch", "model.d_width", "model.d_depth",
    "train.batch", "train.lr_rule", "train.base_lr", "train.base_width", "mng.mode",
    "loss.penalty", "seed",
)
# Scalar fields copied from an eval line of stats.jsonl (the rest is per-step noise here).
ROW_FIELDS = ("step", "images_seen", "wall_s", "loss_d", "loss_g")
# model.json key → column.
_SIZE_KEYS = {
    "generator_params": "g_params", "discriminator_params": "d_params",
    "generator_gflops": "g_gflops", "discriminator_gflops": "d_gflops",
}
RUN_MARKERS = (rundir.STATUS, rundir.STATS, rundir.CONFIG)
# Folders inside a run folder that never hold runs; skipping them keeps the scan fast.
_SKIP_DIRS = {"checkpoints", "samples", "wandb", "__pycache__", ".git"}
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10× faster
# The tidy table plot_scaling writes into a study, committed where run folders are not.
COMMITTED_TABLE = Path("analysis") / "results.csv"
# Read back from CSV as text: a run id of hex digits ("34e03280") would otherwise become a number.
ID_DTYPES = {"run_id": str, "sweep": str}


class AnalysisError(UserError, ValueError):
    """Input the analysis cannot use (missing folder, no runs, no metric, bad table)."""


def load_results(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Read sweep folders, run folders, or parents holding them into one tidy table.

    ``df.attrs["metrics"]`` lists the metric columns found and ``df.attrs["coords"]`` the grid
    axes. Raises ``AnalysisError`` when a path is missing or no run is found.
    """
    runs: list[dict[str, Any]] = []
    seen: set[Path] = set()
    coords: list[str] = []
    for path in map(Path, paths):
        if not path.exists():
            raise AnalysisError(f"{path}: no such folder")
        for entry in _discover(path):
            run_dir = entry["run_dir"].resolve()
            if run_dir in seen:
                continue
            seen.add(run_dir)
            runs.append(entry)
            coords += [axis for axis in entry["coords"] if axis not in coords]
    if not runs:
        raise AnalysisError(
            f"no runs found under {', '.join(map(str, paths))} (expected sweep folders with "
            "manifest.json, or run folders with status.json/stats.jsonl/config.yaml)"
        )

    run_records, evals, owners = [], [], []
    with _cyclic_gc_paused():
        for index, entry in enumerate(runs):
            record, run_evals = _read_run(entry)
            record["_run"] = index
            run_records.append(record)
            evals += run_evals
            owners += [index] * len(run_evals)
    # Built column-wise from the parsed lines: no per-row dict is assembled in Python.
    rows = pd.DataFrame.from_records(evals, columns=list(ROW_FIELDS))
    metrics = pd.DataFrame.from_records([line["metrics"] for line in evals], index=rows.index)
    rows = rows.join(metrics).assign(_run=owners)
    table = pd.DataFrame.from_records(run_records).merge(rows, on="_run", how="inner", validate="one_to_many")
    # Runs that never started lack most columns; the schema must not depend on which runs exist.
    for column in (*CONFIG_COLUMNS, *ROW_FIELDS, "reason", "diverged_step", *_SIZE_KEYS.values()):
        if column not in table:
            table[column] = np.nan
    table = _derive(table)
    table = table.sort_values(["_run", "step"], kind="stable").drop(columns="_run").reset_index(drop=True)
    table.attrs["metrics"] = sorted(metrics.columns, key=metric_rank)
    table.attrs["coords"] = coords
    return table


def load_study_runs(study: str | Path) -> pd.DataFrame | None:
    """``load_results`` of a study folder when at least one of its run folders is on disk, else
    None: a fresh clone has the committed tables of results/<study>/analysis/ but no run folders
    (they are not committed)."""
    study = Path(study)
    if not study.is_dir():
        raise AnalysisError(f"{study}: no such folder")
    if not any(entry["run_dir"].is_dir() for entry in _discover(study)):
        return None
    return load_results([study])


def study_coords(study: str | Path) -> pd.DataFrame:
    """The grid coordinates of every run in a sweep folder's manifest, one row per run (no run
    folder needed)."""
    study = Path(study)
    if not (study / "manifest.json").is_file():
        raise AnalysisError(f"{study}: no manifest.json (not a sweep folder)")
    return pd.DataFrame([entry["coords"] for entry in _sweep_runs(study)])


def load_study_table(*studies: str | Path) -> pd.DataFrame:
    """The tidy table of study folders (or of any folders ``load_results`` reads): from the run
    folders where any is on disk, else from the study's committed tables (a fresh clone has
    ``results/<study>/analysis/`` but no run folders): ``analysis/results.csv`` that
    ``python -m analysis.plot_scaling`` wrote, else its per-slice ``analysis/*/results.csv``
    together (``--where`` reports). ``attrs["source"]`` names what was read and
    ``attrs["committed"]`` is True when any committed table was."""
    live, tables, committed = [], [], []
    for study in map(Path, studies):
        if not study.exists():
            raise AnalysisError(f"{study}: no such folder")
        if any(entry["run_dir"].is_dir() for entry in _discover(study)):
            live.append(study)
            continue
        found = committed_tables(study)
        if not found:
            raise AnalysisError(f"{study}: no run folders on disk and no committed {COMMITTED_TABLE} (make it with "
                                f"python -m analysis.plot_scaling {study} while the run folders exist)")
        tables += [load_table(path) for path in found]
        committed += found
    if live:
        tables.insert(0, load_results(live))
    table = tables[0] if len(tables) == 1 else pd.concat(tables, ignore_index=True).drop_duplicates(["run_id", "step"])
    table.attrs["metrics"] = sorted({m for t in tables for m in metric_columns(t)}, key=metric_rank)
    table.attrs["coords"] = list(dict.fromkeys(c for t in tables for c in t.attrs.get("coords", [])))
    sources = ([f"the run folders under {', '.join(map(str, live))}"] if live else []) + [
        f"the committed table {path} (no run folders on disk)" for path in committed]
    table.attrs["source"] = "; ".join(sources)
    table.attrs["committed"] = bool(committed)
    return table


def committed_tables(study: Path) -> list[Path]:
    """A study's committed tidy tables: ``analysis/results.csv``, else one per report slice."""
    whole = study / COMMITTED_TABLE
    return [whole] if whole.is_file() else sorted(study.glob(f"{COMMITTED_TABLE.parent}/*/{COMMITTED_TABLE.name}"))


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Parsing a study allocates ~10⁵ small dicts that all stay alive, so every collector pass
    rescans a growing heap for cycles it cannot find (parsed JSON/YAML has none): measured
    ~20% of load_results on 1,000 runs. Pause it for the bulk read; restore what it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_table(path: str | Path, required: Sequence[str] = ()) -> pd.DataFrame:
    """Read a CSV (or parquet) table of the tidy shape, e.g. published points.

    Minimal columns: ``model`` or ``run_id``, plus those in ``required`` (the CLI asks for the
    x column and the metric, e.g. ``gflops`` and ``fid50k``). Filled when absent: ``run_id`` (from
    ``model``, else the row number), ``status`` = completed, ``step`` = NaN, ``sweep`` = "".
    """
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"{path}: no such file")
    try:
        table = pd.read_parquet(path) if path.suffix == ".parquet" else _read_csv(path)
    except (ValueError, pd.errors.ParserError, OSError) as err:
        raise AnalysisError(f"{path}: not a readable table ({err})") from err
    missing = [col for col in required if col not in table.columns]
    if not {"model", "run_id"} & set(table.columns):
        missing.insert(0, "model (or run_id)")
    if missing:
        raise AnalysisError(
            f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(map(str, table.columns))})"
        )
    if table.empty:
        raise AnalysisError(f"{path}: the table has no rows")
    if "run_id" not in table:
        unique = table["model"].is_unique
        table["run_id"] = table["model"].astype(str) if unique else [f"row{i}" for i in range(len(table))]
    defaults = {"status": "completed", "step": np.nan, "sweep": ""}
    for column, value in defaults.items():
        if column not in table:
            table[column] = value
    table.attrs["metrics"] = sorted((c for c in table.columns if is_metric(str(c))), key=metric_rank)
    table.attrs["coords"] = []
    return table


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV whose lines starting with ``#`` are comments (provenance of published points).
    pandas' ``comment=`` would also cut values containing ``#``, so whole lines are skipped."""
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return pd.read_csv(io.StringIO("\n".join(lines)), dtype=ID_DTYPES)


def save_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the table as CSV or parquet (by suffix). Mixed-type columns become strings for
    parquet, which needs one type per column (grid coordinates may mix numbers and names)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        out = table.copy()
        for column in out.columns[out.dtypes == object]:
            kinds = {type(v) for v in out[column].dropna()}
            if len(kinds) > 1 or kinds - {str}:
                out[column] = out[column].astype(str).where(out[column].notna(), None)
        out.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)
    return path


_CONDITION = re.compile(r"^(?P<column>[^<>=!]+)(?P<op><=|>=|!=|==|<|>|=)(?P<value>.*)$")
_COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def select_rows(table: pd.DataFrame, conditions: Sequence[str]) -> pd.DataFrame:
    """Rows matching every condition: `COLUMN=VALUE` (as text or as the same number, so `seed=0`,
    `mng.mode=off` and `model.width=64` all work), `COLUMN!=VALUE`, or a numeric comparison
    `<`, `<=`, `>`, `>=` (`model.width<=64`). An unknown column, a non-numeric bound or a
    condition no run meets is an AnalysisError naming it."""
    for condition in conditions:
        match = _CONDITION.match(condition)
        if match is None or not match["column"].strip():
            raise AnalysisError(f"--where {condition!r}: expected COLUMN=VALUE, COLUMN!=VALUE or COLUMN<=NUMBER (<, >, >=)")
        column, op, value = match["column"].strip(), match["op"], match["value"].strip()
        if column not in table:
            raise AnalysisError(f"--where {condition!r}: no column {column!r} (columns: {', '.join(map(str, table.columns))})")
        numbers = pd.to_numeric(table[column], errors="coerce")
        try:
            bound = float(value)
        except ValueError:
            bound = None
        if op in _COMPARE:
            if bound is None:
                raise AnalysisError(f"--where {condition!r}: {op} needs a number, got {value!r}")
            mask = _COMPARE[op](numbers, bound)
        else:
            mask = table[column].astype(str) == value
            if bound is not None:
                mask |= numbers == bound
            if op == "!=":
                mask = ~mask
        if not mask.any():
            values = ", ".join(sorted(table[column].astype(str).unique()))
            raise AnalysisError(f"--where {condition!r}: no run has {column}{op}{value} (values: {values})")
        table = table[mask]
    return table


def metric_columns(table: pd.DataFrame) -> list[str]:
    """The metric columns of a table (recorded by the loaders, else the known names present)."""
    names = table.attrs.get("metrics") or sorted((c for c in table.columns if is_metric(str(c))), key=metric_rank)
    return [m for m in names if m in table]


def default_metric(table: pd.DataFrame) -> str:
    """The metric to analyse when none is named, in `contract.metric_names.metric_rank` order (FID
    against reference statistics, FID against training images, ``fd_fmnist``), the first with
    at least one value."""
    for metric in metric_columns(table):
        if table[metric].notna().any():
            return metric
    raise AnalysisError("no metric values in the results (no run has reached an eval tick); name one with --metric")


def choose_metric(table: pd.DataFrame, wanted: str | None) -> str:
    """``wanted`` (a --metric option) when the table has that column, else `default_metric`'s
    choice when none was named; a named metric the table lacks is an `AnalysisError`."""
    metric = wanted or default_metric(table)
    if metric not in table:
        raise AnalysisError(f"no metric {metric!r} in the results")
    return metric


def final_rows(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per run: its last row with a value of ``metric``; a run without any value keeps
    its last row (metric NaN) so it can still be reported and drawn."""
    ordered = table.sort_values(["run_id", "step"], kind="stable", na_position="first")
    has_value = ordered[metric].notna()
    with_value = ordered[has_value].groupby("run_id", sort=False).tail(1)
    without = ordered[~ordered["run_id"].isin(with_value["run_id"])].groupby("run_id", sort=False).tail(1)
    return pd.concat([with_value, without]).reset_index(drop=True)


# --- discovery -----------------------------------------------------------------------------

def _discover(path: Path) -> list[dict[str, Any]]:
    """Run entries under ``path``: the manifest's runs for a sweep folder, the folder itself for
    a run folder, else whatever the sub-folders hold."""
    if (path / "manifest.json").is_file():
        return _sweep_runs(path)
    if any((path / name).is_file() for name in RUN_MARKERS):
        return [{"run_dir": path, "run_id": path.name, "sweep": "", "coords": {}}]
    found: list[dict[str, Any]] = []
    with os.scandir(path) as children:
        for child in sorted(children, key=lambda c: c.name):
            if child.is_dir() and child.name not in _SKIP_DIRS:
                found += _discover(Path(child.path))
    return found


def _sweep_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    manifest = _read_json(sweep_dir / "manifest.json")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), list):
        raise AnalysisError(f"{sweep_dir / 'manifest.json'}: not a sweep manifest (no 'runs' list)")
    entries = []
    for run in manifest["runs"]:
        name = run.get("name") or run["run_id"]
        entries.append({
            "run_dir": sweep_dir / run.get("dir", f"runs/{name}"),
            "run_id": run.get("run_id", name),
            "sweep": sweep_dir.name,
            "coords": run.get("coords") or {},
        })
    return entries


# --- one run -------------------------------------------------------------------------------

def _read_run(entry: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(run-level record, eval lines) of one run folder. A run without an eval line gets one
    stand-in line at its last step with empty metrics; a missing folder is a pending run."""
    run_dir: Path = entry["run_dir"]
    record: dict[str, Any] = {
        "run_id": entry["run_id"], "sweep": entry["sweep"], "run_dir": str(run_dir), **entry["coords"],
    }
    if not run_dir.is_dir():
        record.update(status="pending", reason="no run folder yet")
        return record, [{"step": np.nan, "metrics": {}}]

    status = rundir.read_status(run_dir) or {}
    record["status"] = status.get("state", "unknown")
    record["reason"] = status.get("reason")
    record["diverged_step"] = status.get("step") if record["status"] in ("diverged", "collapsed") else None

    config = _read_yaml(run_dir / rundir.CONFIG)
    for column in CONFIG_COLUMNS:
        record.setdefault(column, _dotted(config, column))
    model = config.get("model") or {}
    record.setdefault("model", model.get("name") or _size_name(model))

    description = _read_json(run_dir / rundir.MODEL) or _describe(config)
    for key, column in _SIZE_KEYS.items():
        record[column] = description.get(key)

    evals, last = rundir.read_eval_stats(run_dir)
    if not evals:
        evals = [{**last, "step": status.get("step", last.get("step")), "metrics": {}}]
    return record, evals


def _derive(table: pd.DataFrame) -> pd.DataFrame:
    """Columns computed from others: plot aliases, cumulative training FLOPs, GPU-hours."""
    for column in (*_SIZE_KEYS.values(), "step", "images_seen", "wall_s"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    table["params"] = table["g_params"]
    table["gflops"] = table["g_gflops"]
    penalty = table["loss.penalty"].fillna("approx")
    per_image = pd.Series(np.nan, index=table.index)
    for value, group in table.groupby(penalty, sort=False):
        per_image.loc[group.index] = training_flops_per_image(group["g_gflops"], group["d_gflops"], str(value))
    images = table["images_seen"].fillna(table["step"] * pd.to_numeric(table["train.batch"], errors="coerce"))
    table["train_flops"] = images * per_image
    table["gpu_hours"] = table["wall_s"] / 3600.0  # the trainer runs on one device
    return table


def _size_name(model: dict[str, Any]) -> str | None:
    """The registry's spelling of a custom size (``w384-d12-h6-p2``)."""
    keys = ("width", "depth", "heads", "patch")
    if not all(model.get(k) is not None for k in keys):
        return None
    return "w{width}-d{depth}-h{heads}-p{patch}".format(**model)


def _dotted(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _read_json(path: Path) -> Any:
    """Parsed JSON, or None when the file is missing or unreadable (warned: one damaged run
    folder must not hide the others)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        warnings.warn(f"{path}: not valid JSON ({err}); ignored", stacklevel=2)
        return None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=_YAML_LOADER)
    except FileNotFoundError:
        return {}
    except yaml.YAMLError as err:
        warnings.warn(f"{path}: not valid YAML ({err}); ignored", stacklevel=2)
        return {}
    return data if isinstance(data, dict) else {}


def _describe(config: dict[str, Any]) -> dict[str, Any]:
    """Sizes counted from the config (`contract.model_shape`) when a run folder lacks model.json
    (an older trainer, or a run that failed before writing it); empty when it cannot be counted."""
    if not config:
        return {}
    sections = {key: config.get(key) for key in ("model", "mng", "repa", "data")}
    return dict(_describe_cached(json.dumps(sections, sort_keys=True)))


@functools.lru_cache(maxsize=256)
def _describe_cached(sections_json: str) -> tuple[tuple[str, Any], ...]:
    # Cached per size: every seed and LR of a sweep shares the model sections.
    sections = {k: v for k, v in json.loads(sections_json).items() if v is not None}
    try:
        description = describe_run(from_dict(sections))
    except Exception as err:  # best effort: a missing size must not stop the whole table
        warnings.warn(f"could not describe model {sections.get('model')}: {err}", stacklevel=2)
        return ()
    return tuple(description.items())
