"""Bad input, table-driven: every case prints one `error:` line naming what is wrong, exits 2
and writes nothing. The cases are the ones a hostile-but-fair probe of the CLIs found."""
from __future__ import annotations

from pathlib import Path

import pytest

from analysis import plot_scaling
from sweeps import cancel, launch, status

GOOD = "base: gat/configs/fmnist.yaml\nset:\n  train.steps: 10\naxes:\n  seed: [0]\n"

GRID_CASES = {  # name: (grid text or bytes, extra CLI args, text the error must contain)
    "model_is_a_number": (GOOD.replace("train.steps: 10", "model: 5"), [], "model: expected a mapping"),
    "set_model_is_a_number": (GOOD, ["--set", "model=5"], "model: expected a mapping"),
    "binary_config": (bytes(range(256)) * 2, [], "not a YAML text file"),
    "parallelism_not_a_number": (GOOD + "executor:\n  array_parallelism: \"abc\"\n", [],
                                 "executor.array_parallelism: expected int, got str 'abc'"),
    "gpus_not_a_number": (GOOD + "resources:\n  gpus: \"abc\"\n", [], "resources.gpus: expected int, got str 'abc'"),
    "gpus_negative": (GOOD + "resources:\n  gpus: -1\n", [], "resources.gpus: -1 is out of range"),
    "rule_not_a_number": (GOOD + "resources:\n  rules:\n    - when: {seed: 0}\n      timeout_min: soon\n", [],
                          "resources.rules[0].timeout_min: expected int"),
    "include_bad_comparison": (GOOD + "include: [{seed: \">=abc\"}]\n", [], "'>=abc' is not a comparison"),
    "only_bad_regex": (GOOD, ["--only", "("], "--only '(': not a regular expression"),
    "name_with_slashes": ("name: ../../x\n" + GOOD, [], "'../../x' is not a plain folder name"),
    "name_absolute": ("name: /abs/x\n" + GOOD, [], "'/abs/x' is not a plain folder name"),
    "unknown_executor_key": (GOOD + "executor:\n  partitions: gpu\n", [], "unknown key executor.partitions"),
    "pack_more_than_cores": (GOOD + "resources:\n  cpus_per_task: 2\n  pack: {runs_per_job: 4}\n", [],
                             "resources.pack.runs_per_job: 4 runs is more than the job's cpus_per_task=2 cores allow"),
    "pack_of_ddp_runs": (GOOD + "resources:\n  gpus: 8\n  cpus_per_task: 8\n  pack: {runs_per_job: 2}\n", [],
                         "resources.pack.runs_per_job: 2 runs on 8 GPUs would make each a multi-GPU (DDP) run"),
    "pack_ddp_by_rule": (GOOD + "resources:\n  cpus_per_task: 2\n  pack: {runs_per_job: 2}\n  rules:\n"
                            "    - when: {seed: 0}\n      gpus: 4\n", [], "resources.rules[0].pack.runs_per_job"),
}


@pytest.mark.parametrize("case", list(GRID_CASES))
def test_launch_rejects_bad_grids_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    content, extra, message = GRID_CASES[case]
    grid = tmp_path / "grid.yaml"
    grid.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "sweep"
    assert launch.main([str(grid), "--out", str(out), "--executor", "debug", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]


def test_numbers_read_the_same_in_a_file_and_in_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """YAML 1.1 reads 1.0e3 and 1e-4 as strings; gatscale reads them as numbers everywhere."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(GOOD.replace("train.steps: 10", "train.steps: 1.0e3\n  train.base_lr: 1e-4"))
    assert launch.main([str(grid), "--dry-run"]) == 0
    from_file = capsys.readouterr().out
    grid.write_text(GOOD)
    assert launch.main([str(grid), "--dry-run", "--set", "train.steps=1e3", "--set", "train.base_lr=1.0e-4"]) == 0
    from_set = capsys.readouterr().out
    assert from_file == from_set and "1 runs" in from_file
    grid.write_text(GOOD.replace("train.steps: 10", "train.steps: 1.5e0"))  # not a whole number
    assert launch.main([str(grid), "--dry-run"]) == 2
    assert "train.steps: expected int, got float 1.5" in capsys.readouterr().err


@pytest.mark.parametrize("cli", ["status", "cancel"])
def test_status_and_cancel_reject_a_bad_regex(tmp_path: Path, capsys: pytest.CaptureFixture[str], cli: str) -> None:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "manifest.json").write_text('{"grid": "", "runs": [], "jobs": []}')
    main = status.main if cli == "status" else cancel.main
    assert main([str(sweep), "--only", "("]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --only '(': not a regular expression") and err.count("\n") == 1


PLOT_CASES = {  # name: (metric values of runs A..D, expected exit status, error text or exclusion reasons)
    "two_runs": (["10", "8"], 0, {}),
    "inf": (["10", "8", "inf", "5"], 0, {"C": "fid50k = inf is not finite"}),
    "negative": (["10", "-3", "6", "5"], 0, {"B": "fid50k = -3 is not positive (a power law needs > 0)"}),
    "not_a_number": (["10", "abc", "6", "5"], 2, "error: non-numeric fid50k value 'abc' (run B)"),
}


@pytest.mark.parametrize("case", list(PLOT_CASES))
def test_plot_scaling_edge_values(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    import json

    values, code, expected = PLOT_CASES[case]
    rows = "".join(f"{name},{2 ** i},{v}\n" for i, (name, v) in enumerate(zip("ABCD", values)))
    (tmp_path / "t.csv").write_text("model,gflops,fid50k\n" + rows)
    out = tmp_path / "out"
    assert plot_scaling.main(["--table", str(tmp_path / "t.csv"), "--out", str(out), "--bootstrap", "20"]) == code
    if code:
        err = capsys.readouterr().err
        assert err.startswith(expected) and err.count("\n") == 1 and not out.exists()
    else:
        fit = json.loads((out / "fit.json").read_text())
        assert {e["run_id"]: e["why"] for e in fit["excluded"]} == expected


def test_an_unwritable_sweep_folder_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(GOOD)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")  # chmod cannot stop root; a file in the way can
    assert launch.main([str(grid), "--out", str(blocker / "sweep"), "--executor", "debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the sweep folder") and err.count("\n") == 1
