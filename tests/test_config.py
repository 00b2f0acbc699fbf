"""The run config: defaults are the paper's recipe; bad input names the key."""
from __future__ import annotations

import pytest
import yaml

from contract.config import load_config, parse_set, save_config, to_dict
from contract.errors import ConfigError


def test_defaults_are_the_paper_recipe() -> None:
    cfg = load_config()
    assert (cfg.train.beta1, cfg.train.beta2, cfg.train.eps) == (0.0, 0.99, 1e-8)
    assert cfg.train.batch == 512 and cfg.train.grad_clip == 1.0 and cfg.train.ema_decay == 0.999
    assert cfg.loss.gamma == 0.1 and cfg.loss.sigma == 0.01 and cfg.loss.penalty == "approx"
    assert cfg.mng.mode == "exp" and cfg.mng.levels == 4
    assert cfg.train.lr_rule == "width_aware" and cfg.train.base_lr == 2e-4 and cfg.train.base_width == 768


def test_yaml_round_trip_and_overrides(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": {"width": 64, "depth": 4, "heads": 4}, "train": {"batch": 8}}))
    cfg = load_config(path, ["train.base_lr=1e-4", "mng.mode=off", "seed=3"])
    assert cfg.model.width == 64 and cfg.train.base_lr == 1e-4 and cfg.mng.mode == "off" and cfg.seed == 3
    out = tmp_path / "config.yaml"
    save_config(cfg, out)
    assert to_dict(load_config(out)) == to_dict(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.widht=64"], "model.widht"),
        (["train.batch=abc"], "train.batch"),
        (["train.batch=1.5"], "train.batch"),
        (["mng.mode=cubic"], "mng.mode"),
        (["loss.gamma=-0.1"], "loss.gamma"),
        (["train.lr_rule=linear"], "width_aware"),
        (["model.width=100", "model.heads=6"], "model.heads"),
        (["bogus=1"], "bogus"),
        (["repa.encoder=dinov2"], "repa.source"),
        (["model.d_cmap_dim=0"], "model.d_cmap_dim"),
        (["train.compile=true", "loss.penalty=exact"], "loss.penalty=exact"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, overrides)


def test_set_requires_key_value() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["model.width"])


def test_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
