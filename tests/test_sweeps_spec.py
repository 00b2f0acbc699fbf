"""Grid files: parsing, expansion, and one clear error (naming axis and value) for bad grids."""
from __future__ import annotations


from pathlib import Path

import pytest
import yaml

from sweeps import launch
from sweeps.spec import GridError, expand, load_grid, parse_grid, resolve_grid_path, validate_points

BASE = {"model": {"width": 32, "depth": 4, "heads": 2}, "train": {"steps": 10}}


def grid(**sections):
    return parse_grid({"base": BASE, **sections})


def test_product_zip_include_exclude():
    spec = grid(
        axes={"seed": [0, 1], "train.lr_rule": ["constant", "width_aware"]},
        zip=[{"model.width": [32, 64], "model.heads": [2, 4]}],
        exclude=[{"seed": 1, "train.lr_rule": "constant"}],
        include=[{"model.width": "<=64"}],
    )
    points = expand(spec)
    assert len(points) == 2 * 2 * 2 - 2
    assert {(p.coords["model.width"], p.coords["model.heads"]) for p in points} == {(32, 2), (64, 4)}
    assert not any(p.coords["seed"] == 1 and p.coords["train.lr_rule"] == "constant" for p in points)
    assert all(p.overrides == p.coords for p in points)


def test_set_section_reaches_every_point_and_g_d_sizes_are_separate_axes():
    spec = grid(set={"train.steps": 5}, axes={"model.width": [32], "model.d_width": [None, 64]})
    points = expand(spec)
    assert [p.overrides["train.steps"] for p in points] == [5, 5]
    configs = validate_points(spec, points)  # model.d_width interacts: both points are checked whole
    assert {i: c.model.d_width for i, c in configs.items()} == {0: None, 1: 64}


@pytest.mark.parametrize("sections, message", [
    ({"axes": {"model.widht": [32]}}, "axis model.widht: unknown config key"),
    ({"axes": {"model.width": []}}, "axis model.width: empty axis"),
    ({"axes": {"model.width": 32}}, "axis model.width: expected a list"),
    ({"zip": [{"model.width": [32, 64], "model.heads": [2]}]}, "zip[0]: axes have different lengths"),
    ({"axes": {"seed": [0]}, "axis": {}}, "unknown grid section 'axis'"),
    ({"axes": {"seed": [0]}, "executor": {"kind": "kubernetes"}}, "executor.kind='kubernetes'"),
    ({"axes": {"seed": [0]}, "executor": {"paralelism": 2}}, "unknown key executor.paralelism"),
    ({}, "at least one axis"),
])
def test_structural_errors(sections, message):
    with pytest.raises(GridError, match=None) as err:
        grid(**sections)
    assert message in str(err.value)


@pytest.mark.parametrize("axes, named", [
    ({"model.width": [32, "wide"]}, "axis model.width='wide'"),
    ({"mng.mode": ["exp", "cubic"]}, "axis mng.mode='cubic'"),
    ({"model.width": [32, 30]}, "axis model.width=30"),  # 30/2 = 15 is not a multiple of 4
    ({"train.base_lr": [1e-4, -1.0]}, "axis train.base_lr=-1.0"),
])
def test_bad_values_name_axis_and_value(axes, named):
    spec = grid(axes=axes)
    with pytest.raises(GridError) as err:
        validate_points(spec, expand(spec))
    assert str(err.value).startswith(named), str(err.value)


def test_bad_grid_cli_one_error_nothing_written(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"base": BASE, "axes": {"model.width": [32, 33]}}))
    out = tmp_path / "sweep"
    assert launch.main([str(path), "--out", str(out), "--executor", "debug"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "axis model.width=33" in err[0]
    assert not out.exists()


def test_model_build_errors_are_caught_before_submission(tmp_path, capsys):
    # more MNG levels (4) than generator blocks (2): only building the nets can tell
    path = tmp_path / "shallow.yaml"
    path.write_text(yaml.safe_dump({"base": {**BASE, "data": {"kind": "fashion_mnist"}},
                                    "axes": {"model.depth": [2]}}))
    assert launch.main([str(path), "--out", str(tmp_path / "s"), "--dry-run"]) == 2
    assert "axis model.depth=2" in capsys.readouterr().err


def test_base_path_resolves_against_repo_and_bare_names_to_bundled():
    assert resolve_grid_path("scaling_grid.yaml").parent.name == "configs"
    assert resolve_grid_path("scaling_grid").name == "scaling_grid.yaml"
    spec = load_grid("scaling_grid.yaml")
    assert spec.base_source.endswith("gat/configs/fmnist.yaml")
    with pytest.raises(GridError, match="grid file not found"):
        resolve_grid_path("no_such_grid.yaml")


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parent.parent / "sweeps" / "configs").glob("*.yaml")
                                          if p.name != "lr_search.yaml"))  # an Optuna search, not a grid
def test_bundled_grids_validate(name):
    spec = load_grid(name)
    validate_points(spec, expand(spec))


def test_imagenet_dry_run_prints_gpu_hours(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert launch.main(["imagenet256_scaling.yaml", "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "GPU-h" in text and "GPU-hours" in text and "w1152-d28-p2" in text
    assert "would submit 8" in text
    assert not out.exists()


def test_cpu_dry_run_shows_gflops_and_cpu_hours(tmp_path, capsys):
    """A CPU grid's models are 1e-5 to 1e-3 GFLOPs and its runs ask for no GPU: the table shows
    the figures (not 0.00) and calls the hours CPU-hours."""
    assert launch.main(["scaling_grid.yaml", "--dry-run", "--out", str(tmp_path / "sweep")]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, runs, total = lines[0], lines[2:-2], lines[-1]
    assert "CPU-h" in header and "GPU-h" not in header and "CPU-hours" in total and "GPU-hours" not in total
    gflops = [float(line.split()[3]) for line in runs]
    hours = [float(line.split()[6]) for line in runs]
    assert len(runs) == 12 and min(gflops) > 0 and min(hours) > 0
    # the generator's GFLOPs, as the committed fit's x axis reads them (width 4 to width 32)
    assert (min(gflops), max(gflops)) == pytest.approx((2.42e-5, 8.83e-4), rel=0.01)
