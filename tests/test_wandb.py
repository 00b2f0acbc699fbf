"""W&B logging (docs/wandb.md): the logging keys, the sweep's group and grid coordinates, sample
images, and a resumed run's W&B history matching its stats.jsonl.

Trainings run offline on the synthetic data of test_train.py, and the assertions read back what
W&B wrote: the `.wandb` transaction log of each offline run.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from wandb.proto import wandb_internal_pb2

import gat.train
from contract import rundir
from gat import checkpoint, wandb_log
from contract.config import COSMETIC_KEYS, LoggingConfig, from_dict, load_config, to_dict
from contract.errors import ConfigError
from contract.config import flatten
from sweeps.plan import make_plan, run_id
from sweeps.spec import parse_grid
from conftest import Interrupt, tiny_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def wandb_env(monkeypatch, tmp_path_factory):
    """Offline, with W&B's own files (settings, cache, artifacts) in a temporary folder."""
    home = tmp_path_factory.mktemp("wandb_home")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(home / name.lower()))


# --------------------------------------------------------------------------------------------
# Reading what an offline run wrote


@dataclass
class OfflineRun:
    """One offline W&B run as its transaction log records it."""

    record: Any  # wandb_internal_pb2.RunRecord
    config: dict[str, Any] = field(default_factory=dict)
    history: list[tuple[int, set[str]]] = field(default_factory=list)  # (step, keys) per row

    @property
    def steps(self) -> list[int]:
        return [step for step, _ in self.history]


def read_records(path: Path) -> list[Any]:
    """The records of a `.wandb` file. wandb 0.31 ships no Python reader for it (older releases had
    wandb.sdk.internal.datastore), so this reads the format: a 7-byte header, then 32 KiB blocks
    of chunks [crc32c:4][length:2][type:1][data], a record being one FULL chunk or a FIRST,
    MIDDLE..., LAST run of them; a block's tail shorter than a chunk header is padding."""
    block, full, last = 32 * 1024, 1, 4
    data = path.read_bytes()
    assert data[:7] == b":W&B\xe1\xbe\x00", f"{path} is not a W&B transaction log"
    records, parts, pos = [], [], 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if kind == 0:
            break
        parts.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (full, last):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            records.append(record)
            parts = []
    return records


def offline_runs(run_dir: Path) -> dict[str, OfflineRun]:
    """Every offline W&B run in a run folder, by W&B run id.

    W&B's service process writes the `.wandb` files asynchronously, and `run.finish()` can return
    before the last records are on disk (a CI run once read the second attempt's file empty).
    `wandb.teardown()` waits for the service to exit, after which every record is written."""
    import wandb

    wandb.teardown()
    runs: dict[str, OfflineRun] = {}
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        run = None  # every log starts with its run record
        for record in read_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = runs.setdefault(record.run.run_id, OfflineRun(record.run))
                run.config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
            elif kind == "config":
                run.config.update({item.key: json.loads(item.value_json) for item in record.config.update})
            elif kind == "history":
                keys = {item.key or item.nested_key[0] for item in record.history.item}
                run.history.append((record.history.step.num, keys))
    return runs


def steps_in_stats(run_dir: Path) -> list[int]:
    return [record["step"] for record in rundir.read_stats(run_dir)]


# --------------------------------------------------------------------------------------------
# Config keys


def test_logging_keys_default_to_none_and_are_cosmetic():
    logging = LoggingConfig()
    assert (logging.wandb, logging.wandb_entity, logging.wandb_group, logging.wandb_job_type) == ("offline", None, None, None)
    assert logging.wandb_tags == [] and logging.grid_point == {}
    assert {f"logging.{name}" for name in to_dict(load_config())["logging"]} <= COSMETIC_KEYS


@pytest.mark.parametrize("overrides, message", [
    ({"logging.wandb_tags": "baseline"}, "logging.wandb_tags: expected list"),
    ({"logging.wandb_tags": ["ok", 3]}, "logging.wandb_tags[1]: expected str"),
    ({"logging.wandb_tags": ["x" * 65]}, "logging.wandb_tags[0]"),
    ({"logging.wandb_tags": [""]}, "1 to 64 characters"),
    ({"logging.wandb_entity": 7}, "logging.wandb_entity: expected str | None"),
    ({"logging.wandb_group": ""}, "logging.wandb_group is an empty string"),
    ({"logging.wandb_job_type": ["train"]}, "logging.wandb_job_type"),
    ({"logging.grid_point": [32]}, "logging.grid_point: expected dict"),
    ({"logging.grid_point": {"model.width": {"nested": 1}}}, "logging.grid_point: expected {axis name: value}"),
    ({"logging.grid_point": {1: 2}}, "logging.grid_point"),
])
def test_bad_logging_values_are_config_errors(overrides, message):
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides)
    assert message in str(caught.value)


def test_committed_run_ids_do_not_change():
    manifests = sorted(ROOT.glob("results/*/manifest.json"))
    assert manifests, "no committed sweep manifests found"
    for path in manifests:
        recorded = json.loads(path.read_text())
        grid_file = ROOT / recorded["grid_file"]
        spec = parse_grid(yaml.safe_load(recorded["grid"]), path=grid_file, text=recorded["grid"])
        planned = {run.run_id for run in make_plan(spec, path.parent).runs}
        assert {run["run_id"] for run in recorded["runs"]} <= planned, path


# --------------------------------------------------------------------------------------------
# The sweep engine's group and grid coordinates


BASE = {"model": {"width": 32, "depth": 4, "heads": 2}, "train": {"steps": 10}}


def test_sweep_runs_get_the_grid_name_as_group_and_their_coordinates():
    spec = parse_grid({"name": "widths", "base": BASE, "axes": {"model.width": [32, 64], "seed": [0, 1]}})
    runs = make_plan(spec, Path("/s")).runs
    for run in runs:
        config = from_dict(run.config())  # what the job hands the trainer, valid as it is
        assert config.logging.wandb_group == "widths"
        assert config.logging.grid_point == run.coords == {"model.width": config.model.width, "seed": config.seed}
        # The W&B context is cosmetic: the id of the config the trainer gets is the run's id.
        assert run_id(flatten(to_dict(config))) == run.run_id
    assert len({run.run_id for run in runs}) == 4


def test_a_grid_that_sets_a_group_keeps_it():
    spec = parse_grid({"name": "widths", "base": BASE, "set": {"logging.wandb_group": "study-7"},
                       "axes": {"seed": [0]}})
    (run,) = make_plan(spec, Path("/s")).runs
    assert run.config()["logging"]["wandb_group"] == "study-7"
    plain = make_plan(parse_grid({"name": "other", "base": BASE, "axes": {"seed": [0]}}), Path("/s")).runs[0]
    assert plain.run_id == run.run_id


# --------------------------------------------------------------------------------------------
# What a training logs


def offline_config(**overrides):
    return tiny_config(**{"logging.wandb": "offline", **overrides})


@pytest.mark.slow
def test_offline_run_records_the_keys_images_and_every_stats_step(synthetic, tmp_path, capsys):
    config = offline_config(**{
        "logging.wandb_entity": "lab", "logging.wandb_group": "widths", "logging.wandb_tags": ["smoke", "cpu"],
        "logging.wandb_job_type": "train", "logging.grid_point": {"model.width": 32, "seed": 0},
    })
    run_dir = tmp_path / "run"
    assert gat.train.run(config, run_dir) == "completed"

    (run,) = offline_runs(run_dir).values()
    assert (run_dir / "wandb_id").read_text().strip() == run.record.run_id
    assert (run.record.entity, run.record.project, run.record.run_group, run.record.job_type) == (
        "lab", "gatscale", "widths", "train")
    assert list(run.record.tags) == ["smoke", "cpu"]
    assert run.config["grid"] == {"model.width": 32, "seed": 0}
    assert run.config["model"]["width"] == 32 and run.config["logging"]["wandb_group"] == "widths"
    assert wandb_log.RESUMED_FROM not in run.config

    assert run.steps == steps_in_stats(run_dir) == [2, 3, 4, 6]
    rows = dict(run.history)
    assert {"loss_d", "loss_g", "diagnostics/g_output_change", "diagnostics/g_block_ablation/0"} <= rows[3]
    for step in (3, 6):  # the eval ticks, as stats.jsonl's sample grids
        assert {"samples/untruncated", "samples/truncated"} <= rows[step]
    assert not any(key.startswith("samples/") for key in rows[2] | rows[4])
    assert len(list(run_dir.glob("wandb/offline-run-*/files/media/images/samples/*.png"))) == 4

    out = capsys.readouterr().out
    command = re.search(r"wandb sync (\S+)", out)
    assert command and Path(command.group(1)) == (run_dir / "wandb").resolve()


def stop_before_checkpoint(monkeypatch, config, run_dir, step):
    """Run and die just before the checkpoint at `step` is written: W&B has logged past the last
    checkpoint, as after a preemption."""
    real_save = checkpoint.save

    def die_at(directory, state, **kwargs):
        if state["step"] == step:
            raise Interrupt
        real_save(directory, state, **kwargs)

    monkeypatch.setattr(checkpoint, "save", die_at)
    with pytest.raises(Interrupt):
        gat.train.run(config, run_dir)
    monkeypatch.setattr(checkpoint, "save", real_save)


@pytest.mark.slow
def test_resumed_offline_run_history_matches_stats_without_gap_or_duplicate(synthetic, monkeypatch, tmp_path):
    config = offline_config(**{"train.ckpt_every": 3, "logging.wandb_group": "widths"})  # checkpoints at 3 and 6
    run_dir = tmp_path / "run"
    stop_before_checkpoint(monkeypatch, config, run_dir, step=6)
    (first,) = offline_runs(run_dir).values()
    assert first.steps == [2, 3, 4, 6]  # 4 and 6 are past the checkpoint: they will be redone

    assert gat.train.run(config, run_dir) == "completed"
    runs = offline_runs(run_dir)
    assert len(runs) == 2
    (second,) = [run for run in runs.values() if run.record.run_id != first.record.run_id]
    link = second.config[wandb_log.RESUMED_FROM]
    assert link == {"run_id": first.record.run_id, "step": 3}
    assert second.record.run_group == first.record.run_group == "widths"
    assert (run_dir / "wandb_id").read_text().strip() == second.record.run_id

    history = [s for s in first.steps if s <= link["step"]] + second.steps
    assert history == steps_in_stats(run_dir) == [2, 3, 4, 6]
    assert all(s > link["step"] for s in second.steps)
    assert {"samples/untruncated", "samples/truncated"} <= dict(second.history)[6]


# --------------------------------------------------------------------------------------------
# Resume online: rewind where W&B can, else a linked run; and W&B failures never stop a run


class FakeRun:
    def __init__(self, run_id: str, root: Path):
        self.id, self.offline = run_id, False
        self.settings = type("Settings", (), {"wandb_dir": str(root / "wandb")})()
        self.logged: list[tuple[dict, int]] = []

    def log(self, row, step):
        self.logged.append((row, step))

    def finish(self, exit_code=0):
        pass


def test_online_resume_rewinds_the_run_and_falls_back_to_a_linked_run(monkeypatch, tmp_path):
    import wandb

    assert wandb_log.can_rewind("online") and not wandb_log.can_rewind("offline")
    calls, refuse = [], []

    def init(**kwargs):
        calls.append(kwargs)
        if "resume_from" in kwargs and refuse:
            raise wandb.errors.CommError("rewind is not enabled for this entity")
        return FakeRun("new" if refuse else "old", tmp_path)

    monkeypatch.setattr(wandb, "init", init)
    (tmp_path / rundir.WANDB_ID).write_text("old\n")
    config = load_config(None, {"logging.wandb": "online"})

    wandb_log.WandbLog(config, tmp_path, step=5).finish()
    assert calls[-1]["resume_from"] == "old?_step=5" and wandb_log.RESUMED_FROM not in calls[-1]["config"]
    assert (tmp_path / rundir.WANDB_ID).read_text().strip() == "old"  # rewound: the same run

    refuse.append(True)
    calls.clear()
    wandb_log.WandbLog(config, tmp_path, step=5).finish()
    assert [("resume_from" in c) for c in calls] == [True, False]
    assert calls[-1]["config"][wandb_log.RESUMED_FROM] == {"run_id": "old", "step": 5}
    assert (tmp_path / rundir.WANDB_ID).read_text().strip() == "new"


def test_a_failing_wandb_only_disables_the_mirror(monkeypatch, tmp_path, capsys):
    import wandb

    def broken(**kwargs):
        raise RuntimeError("no W&B today")

    monkeypatch.setattr(wandb, "init", broken)
    log = wandb_log.WandbLog(load_config(None, {}), tmp_path, step=0)
    log.log({"step": 1, "loss_d": 0.5})
    log.finish()
    assert log.run is None and not (tmp_path / rundir.WANDB_ID).exists()
    assert "W&B disabled (RuntimeError: no W&B today)" in capsys.readouterr().err
