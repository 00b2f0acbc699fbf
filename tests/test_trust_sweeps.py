"""Issue 20, the sweep engine's part: a point is one run whatever its folder is called or however
its numbers are spelled, cancel stays inside its sweep, resume ignores every cosmetic key, and bad
launches fail before they write."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sweeps.launch import validate_plan
from sweeps.plan import make_plan
from sweeps.spec import BUNDLED, GridError, load_grid

GOLDEN_IDS = Path(__file__).parent / "golden" / "run_ids.json"


def plan_ids(tmp_path: Path, text: str, name: str = "grid.yaml") -> list[str]:
    """Run ids of a grid written as YAML text (read by the grid loader, as a user's file is)."""
    path = tmp_path / name
    path.write_text(text)
    return [r.run_id for r in make_plan(load_grid(path), tmp_path / "sweep").runs]


def test_bundled_grid_ids_are_pinned():
    # Generated from main before issue 20: a changed id would orphan every committed run folder.
    golden = json.loads(GOLDEN_IDS.read_text())
    grids = sorted(p.name for p in BUNDLED.glob("*.yaml") if "search" not in yaml.safe_load(p.read_text()))
    assert sorted(golden) == grids
    for grid, ids in golden.items():
        assert [r.run_id for r in make_plan(load_grid(grid), Path("/nonexistent")).runs] == ids, grid


@pytest.mark.parametrize("key, spellings", [("train.steps", ("60", "60.0", "6e1")), ("seed", ("0", "0.0")),
                                            ("train.base_lr", ("1", "1.0")), ("mng.mode", ("off", "'off'"))])
def test_one_config_one_id_whatever_the_spelling(tmp_path, key, spellings):
    section, leaf = key.split(".") if "." in key else (None, key)
    for where in ("axes", "set", "base"):
        ids = set()
        for value in spellings:
            if where == "axes":
                text = f"base: fmnist_smoke.yaml\naxes: {{{key}: [{value}]}}\n"
            elif where == "set":
                text = f"base: fmnist_smoke.yaml\nset: {{{key}: {value}}}\naxes: {{model.width: [8]}}\n"
            else:
                inline = f"{{{section}: {{{leaf}: {value}}}}}" if section else f"{{{leaf}: {value}}}"
                text = f"base: {inline}\naxes: {{model.width: [8]}}\n"
            ids.update(plan_ids(tmp_path, text))
        assert len(ids) == 1, (where, ids)


def test_int_field_given_a_fraction_is_an_error(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("base: fmnist_smoke.yaml\naxes: {train.steps: [60.5]}\n")
    with pytest.raises(GridError, match=r"axis train.steps=60.5: train.steps: expected int"):
        validate_plan(make_plan(load_grid(path), tmp_path / "s"))
