"""The sizes a forecast chooses from are priced as the study's own runs were: the template is
the first run's config as the study's manifest records it (its grid's base config and the run's
overrides), read without the sweep engine, from any working directory."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from analysis import candidates
from analysis.load import AnalysisError

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "results" / "isoflop_cpu"


def test_the_template_is_the_manifests_first_run_and_prices_the_ladder_as_its_table(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the grid's base (gat/configs/fmnist.yaml) resolves from anywhere
    template = candidates.template_from_study(STUDY)
    first = json.loads((STUDY / "manifest.json").read_text())["runs"][0]["overrides"]
    assert {key: template[key] for key in first} == first
    assert template["data.kind"] == candidates.template_from_config("fmnist.yaml")["data.kind"]
    table = pd.read_csv(STUDY / "analysis" / "results.csv")
    sizes = table.drop_duplicates("run_id")[["model.width", "model.depth", "model.heads", "model.patch"]]
    priced = [candidates.describe_size(template, *map(int, size)) for size in sizes.drop_duplicates().to_numpy()]
    candidates.check_flop_count(priced, table)  # the table's G GFLOPs, to 1%


def write_manifest(folder: Path, manifest: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


GRID = "base: gat/configs/fmnist.yaml\nset:\n  train.batch: 16\n"
RUN = {"run_id": "r", "overrides": {"train.batch": 16, "model.width": 32, "model.depth": 4, "model.heads": 4}}


def test_a_manifest_recording_a_grid_and_a_run_is_enough(tmp_path):
    template = candidates.template_from_study(write_manifest(tmp_path / "s", {"grid": GRID, "runs": [RUN]}))
    assert (template["model.width"], template["train.batch"]) == (32, 16)


@pytest.mark.parametrize(("manifest", "message"), [
    (None, "manifest.json: not readable"),
    ([], "not a manifest"),
    ({"runs": [RUN]}, "no 'grid' field"),
    ({"grid": GRID}, "no 'runs' entry with its 'overrides'"),
    ({"grid": GRID, "runs": [{"run_id": "r"}]}, "no 'runs' entry with its 'overrides'"),
    ({"grid": "base: nowhere/missing.yaml\n", "runs": [RUN]}, "base config not found: nowhere/missing.yaml"),
    ({"grid": GRID, "runs": [{"overrides": {"model.width": -1}}]}, "the recorded run config does not load"),
])
def test_a_manifest_without_what_the_template_needs_is_named(tmp_path, manifest, message):
    study = tmp_path / "s"
    if manifest is None:
        study.mkdir()
    else:
        write_manifest(study, manifest)
    with pytest.raises(AnalysisError, match="give --config CONFIG") as err:
        candidates.template_from_study(study)
    assert message in str(err.value) and str(study) in str(err.value)
