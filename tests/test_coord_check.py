"""gat.coord_check: the CLI writes the CSV analysis.ablations reads, and the LR rules act on it."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from gat import coord_check


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("coord")
    code = coord_check.main(["--widths", "16", "32", "--rules", "constant", "mup", "--steps", "2",
                             "--head-dim", "8", "--batch", "8", "--out", str(out)])
    assert code == 0
    return pd.read_csv(out / "coord_check.csv")


@pytest.mark.slow
def test_csv_shape(rows: pd.DataFrame) -> None:
    assert tuple(rows.columns) == coord_check.COLUMNS
    assert set(rows["net"]) == {"G", "D"} and set(rows["step"]) == {0, 1, 2}
    modules = set(rows[rows["net"] == "G"]["module"])
    assert {"mapping_net", "blocks.0", "blocks.1.attn", "blocks.1.ffn", "heads.1"} <= modules
    assert {"patch_embed", "blocks.0.ffn", "head"} <= set(rows[rows["net"] == "D"]["module"])
    # one value per (net, module, width, rule, seed, step), all finite and positive
    assert not rows.duplicated(["net", "module", "width", "rule", "seed", "step"]).any()
    assert (rows["rms"] > 0).all()


@pytest.mark.slow
def test_rules_agree_at_the_base_width_only(rows: pd.DataFrame) -> None:
    keyed = rows.set_index(["net", "module", "width", "step", "rule"])["rms"].unstack("rule")
    # the base width defaults to the smallest, where every rule gives the same LR: identical runs
    base = keyed.xs(16, level="width")
    assert (base["constant"] == base["mup"]).all()
    # at init the rules cannot differ at any width; after a step the wider net's LRs do
    wide = keyed.xs(32, level="width")
    assert (wide.xs(0, level="step")["constant"] == wide.xs(0, level="step")["mup"]).all()
    trained = wide.xs(2, level="step")
    assert (trained["constant"] != trained["mup"]).any()


def test_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert coord_check.main(["--widths", "16", "--rules", "fast", "--out", str(tmp_path)]) == 2
    assert "unknown LR rule 'fast'" in capsys.readouterr().err
    assert coord_check.main(["--widths", "20", "--head-dim", "8", "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "coord_check.csv").exists()
