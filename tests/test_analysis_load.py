"""analysis.load / contract.flops against synthetic run and sweep folders (docs/run_folder.md).

``write_run`` and ``write_sweep`` are also used by the other analysis tests and the benchmark.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis import load
from run_folders import PUBLISHED, curve, size_gflops, write_run, write_sweep
from contract.config import from_dict
from contract.flops import forward_passes, training_flops_per_image
from contract.model_shape import describe
from analysis.load import AnalysisError, default_metric, final_rows, load_results, load_table, save_table

@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return write_sweep(tmp_path / "scaling", [
        {"name": "s", "coords": {"size": "S/2", "seed": 0},
         "run": {"width": 384, "evals": curve([100, 200, 300], 80, 40), "log_every": 50}},
        {"name": "b", "coords": {"size": "B/2", "seed": 0},
         "run": {"width": 768, "heads": 12, "evals": curve([100, 200], 70, 30), "state": "diverged",
                 "last_step": 250}},
        {"name": "early", "coords": {"size": "L/2", "seed": 0},
         "run": {"width": 1024, "depth": 24, "heads": 16, "state": "diverged", "last_step": 60, "log_every": 20}},
        {"name": "boom", "coords": {"size": "S/2", "seed": 1},
         "run": {"state": "failed", "reason": "CUDA OOM", "last_step": 0}},
    ], pending=["later"])


def test_sweep_rows_coords_and_statuses(sweep: Path) -> None:
    table = load_results([sweep])
    per_run = table.groupby("run_id").size().to_dict()
    assert per_run == {"id-s": 3, "id-b": 2, "id-early": 1, "id-boom": 1, "id-later": 1}
    status = table.groupby("run_id")["status"].first().to_dict()
    assert status == {"id-s": "completed", "id-b": "diverged", "id-early": "diverged", "id-boom": "failed",
                      "id-later": "pending"}
    early = table[table["run_id"] == "id-early"].iloc[0]
    assert math.isnan(early["fid50k"]) and early["diverged_step"] == 60 and early["step"] == 60
    assert table[table["run_id"] == "id-boom"]["reason"].iloc[0] == "CUDA OOM"
    assert table[table["run_id"] == "id-s"]["size"].tolist() == ["S/2"] * 3  # grid coordinate
    assert table.attrs["coords"] == ["size", "seed"]
    assert table.attrs["metrics"] == ["fid50k"]
    assert set(table["sweep"]) == {"scaling"}
    s = table[table["run_id"] == "id-s"]
    assert s["step"].tolist() == [100, 200, 300]  # the log-only lines are not rows
    assert s["model.width"].iloc[0] == 384 and s["train.lr_rule"].iloc[0] == "width_aware"


def test_parent_folder_with_bare_runs_and_sweeps(tmp_path: Path, sweep: Path) -> None:
    write_run(tmp_path / "adhoc" / "one", width=1152, depth=28, heads=16, evals=curve([10, 20], 50, 20), seed=3)
    table = load_results([tmp_path])
    assert set(table["run_id"]) == {"id-s", "id-b", "id-early", "id-boom", "id-later", "one"}
    one = table[table["run_id"] == "one"].iloc[0]
    assert one["sweep"] == "" and one["model"] == "w1152-d28-h16-p2" and one["seed"] == 3
    # A run named twice (its sweep and itself) is read once.
    assert len(load_results([sweep, sweep / "runs" / "s"])) == len(load_results([sweep]))


def test_training_flops_formula(sweep: Path) -> None:
    assert forward_passes("approx") == (3.0, 16.0)
    assert forward_passes("none") == (3.0, 10.0)
    row = load_results([sweep]).query("run_id == 'id-s'").iloc[-1]
    g = size_gflops(384, 12, 2)
    expected = 300 * 32 * 2e9 * (3 * g + 16 * 0.8 * g)
    assert row["train_flops"] == pytest.approx(expected)
    assert row["train_flops"] == pytest.approx(row["images_seen"] * training_flops_per_image(g, 0.8 * g))
    assert row["gflops"] == pytest.approx(g) and row["gpu_hours"] == pytest.approx(0.05 * 300 / 3600)
    with pytest.raises(ValueError, match="penalty"):
        forward_passes("bogus")


def test_torn_line_is_skipped(tmp_path: Path) -> None:
    run = write_run(tmp_path / "r", evals=curve([10, 20], 9, 5), log_every=5)
    with (run / "stats.jsonl").open("a") as handle:
        handle.write('{"step": 25, "metrics": {"fid50k": 4')  # crash mid-write
    table = load_results([run])
    assert table["step"].tolist() == [10, 20] and table["fid50k"].tolist() == pytest.approx([9, 5])


def test_missing_model_json_of_a_size_that_cannot_be_built(tmp_path: Path) -> None:
    run = write_run(tmp_path / "r", width=100, heads=3, evals=curve([10, 20], 9, 5), model_json=False)
    with pytest.warns(UserWarning, match=r"could not describe model.*not divisible"):
        table = load_results([run])
    assert len(table) == 2 and table["g_params"].isna().all() and table["train_flops"].isna().all()


def test_missing_model_json_filled_from_the_config(tmp_path: Path) -> None:
    run = write_run(tmp_path / "r", evals=curve([10, 20], 9, 5), model_json=False)
    row = load_results([run]).iloc[0]
    assert row["g_gflops"] == pytest.approx(6.0, rel=0.05)  # GAT-S/2, as in tests/data/published_gat_v1.csv
    assert row["g_params"] == pytest.approx(29.4e6, rel=0.05)


def test_missing_model_json_is_sized_at_the_runs_own_data_shape(tmp_path: Path) -> None:
    # A Fashion-MNIST run (4x8x8 latents, 10 classes) is not sized as if it were on ImageNet.
    run = write_run(tmp_path / "r", width=32, depth=4, heads=4, log_every=10, evals=curve([10, 20], 9, 5), model_json=False)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"] = {"kind": "fashion_mnist"}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    row = load_results([run]).iloc[0]
    expected = describe(from_dict(config), latent_channels=4, latent_size=8, num_classes=10, repa_dim=None)
    assert row["g_gflops"] == pytest.approx(expected["generator_gflops"], rel=1e-12)
    assert row["g_params"] == expected["generator_params"]


def test_a_study_without_run_folders_reads_its_committed_table(sweep: Path) -> None:
    full = load.load_study_table(sweep)
    assert load.load_study_runs(sweep) is not None and full.attrs["coords"] == ["size", "seed"]
    save_table(full, sweep / load.COMMITTED_TABLE)
    shutil.rmtree(sweep / "runs")  # a fresh clone: run folders are not committed
    assert load.load_study_runs(sweep) is None
    committed = load.load_study_table(sweep)
    assert committed["run_id"].tolist() == full["run_id"].tolist() and committed.attrs["metrics"] == ["fid50k"]
    assert load.study_coords(sweep)["size"].tolist()[:4] == ["S/2", "B/2", "L/2", "S/2"]  # from the manifest
    (sweep / load.COMMITTED_TABLE).unlink()
    with pytest.raises(AnalysisError, match="no run folders on disk and no committed analysis/results.csv"):
        load.load_study_table(sweep)
    with pytest.raises(AnalysisError, match="no such folder"):
        load.load_study_runs(sweep / "missing")


def test_final_rows_and_default_metric(sweep: Path) -> None:
    table = load_results([sweep])
    assert default_metric(table) == "fid50k"
    final = final_rows(table, "fid50k").set_index("run_id")
    assert final.loc["id-s", "step"] == 300 and final.loc["id-s", "fid50k"] == pytest.approx(40)
    assert final.loc["id-b", "step"] == 200  # its last eval, before it diverged
    assert math.isnan(final.loc["id-early", "fid50k"])
    assert len(final) == 5


def test_no_metric_anywhere(tmp_path: Path) -> None:
    write_run(tmp_path / "r", state="diverged", last_step=40, log_every=10)
    table = load_results([tmp_path])
    with pytest.raises(AnalysisError, match="no metric"):
        default_metric(table)


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(AnalysisError, match="no runs found"):
        load_results([tmp_path])
    with pytest.raises(AnalysisError, match="no such folder"):
        load_results([tmp_path / "nope"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{}")
    with pytest.raises(AnalysisError, match="not a sweep manifest"):
        load_results([tmp_path / "bad"])


def test_load_table_published_and_malformed(tmp_path: Path) -> None:
    table = load_table(PUBLISHED, required=["gflops", "fid50k"])
    assert len(table) == 6 and table["run_id"].tolist()[0] == "S/4"
    assert set(table["status"]) == {"completed"}
    bad = tmp_path / "bad.csv"
    bad.write_text("name,flops\nS,1\n")
    with pytest.raises(AnalysisError, match=r"missing column\(s\) model \(or run_id\), gflops, fid50k"):
        load_table(bad, required=["gflops", "fid50k"])
    with pytest.raises(AnalysisError, match="no such file"):
        load_table(tmp_path / "none.csv")


def test_save_csv_and_parquet_round_trip(tmp_path: Path, sweep: Path) -> None:
    table = load_results([sweep])
    table["mixed"] = ["a", 1, 2.5, None, [1, 2], 3, 4, 5][: len(table)]  # a grid axis mixing types
    back_csv = pd.read_csv(save_table(table, tmp_path / "t.csv"))
    back_pq = pd.read_parquet(save_table(table, tmp_path / "t.parquet"))
    assert len(back_csv) == len(back_pq) == len(table)
    assert back_pq["fid50k"].equals(table["fid50k"]) and back_pq["mixed"].iloc[1] == "1"
