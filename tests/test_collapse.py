"""Collapse as a recorded outcome (issue 23, item 1): the rule on synthetic FD traces, its
state in the sweep engine, and a tiny run forced into collapse by an absurd D learning rate."""
from __future__ import annotations

import json

import pytest

from gat.train import CollapseWatch
from sweeps.launch import decide


def feed(trace: list[float], ratio: float = 1.1, patience: int = 3) -> dict | None:
    watch = CollapseWatch(ratio, patience)
    fired = [watch.update(30 * (i + 1), {"fd_fmnist": fd}) for i, fd in enumerate(trace)]
    assert sum(f is not None for f in fired) <= 1  # it fires once
    return watch.fired


def test_sustained_blow_up_fires_with_step_and_signal():
    # the pilot with train.d_lr_mult=100 (docs/run_folder.md)
    fired = feed([388, 372, 352, 311, 271, 273, 305, 304, 311, 314])
    assert fired is not None
    assert (fired["step"], fired["signal"], fired["best"], fired["since"]) == (270, "fd_fmnist", 271, 210)


def test_a_run_that_recovers_is_not_flagged():
    assert feed([373, 328, 346, 317, 305, 296, 278, 240, 221, 224]) is None  # the normal pilot
    assert feed([300, 200, 400, 400, 190, 400, 400, 180]) is None  # two bad evals, then better than ever


def test_patience_zero_never_fires():
    assert feed([100, 1000, 1000, 1000, 1000], patience=0) is None


def test_a_collapsed_run_is_final_and_never_retried():
    assert decide("collapsed", queued=False, rerun_failed=True).startswith("skip")


def test_new_keys_at_their_default_keep_run_ids_and_set_ones_change_them():
    from sweeps import plan
    defaults = plan.default_flat()
    changed = dict(defaults, **{"train.collapse_patience": 0})
    assert plan.run_id(defaults) != plan.run_id(changed)
    assert "collapse" not in plan.run_identity(defaults)


@pytest.mark.slow
def test_absurd_d_lr_collapses_a_tiny_run(tmp_path):
    from contract.config import load_config
    from gat.train import run
    config = load_config("fmnist_smoke.yaml", {"model.width": 16, "train.steps": 300, "eval.every": 30,
                                                "train.d_lr_mult": 100.0, "logging.progress": "lines"})
    assert run(config, tmp_path / "r") == "collapsed"
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["state"] == "collapsed" and "fd_fmnist" in status["reason"]
    last = json.loads((tmp_path / "r" / "stats.jsonl").read_text().splitlines()[-1])
    assert last["collapse"]["step"] == status["step"] < 300
    assert run(config, tmp_path / "r") == "collapsed"  # a relaunch leaves it alone


@pytest.mark.parametrize("key, value", [("train.collapse_fd_ratio", 0.0), ("train.collapse_patience", -1)])
def test_bad_collapse_keys_are_config_errors_naming_the_key(key, value):
    from contract.config import load_config
    from contract.errors import ConfigError
    with pytest.raises(ConfigError, match=key):
        load_config("fmnist_smoke.yaml", {key: value})


def test_calibration_thresholds_are_where_the_trainers_rule_starts_firing():
    # benchmarks/collapse_calibration.py reports, per run, the largest ratio that still fires;
    # docs/collapse.md's recommendation rests on it, so it must agree with CollapseWatch itself.
    import numpy as np
    from benchmarks.collapse_calibration import firing_threshold, fires

    rng = np.random.default_rng(0)
    for _ in range(200):
        values = 200 * np.exp(np.cumsum(rng.normal(-0.02, 0.08, size=int(rng.integers(3, 10)))))
        trace = [(i, {"fd": float(v)}) for i, v in enumerate(values)]
        for patience in (1, 2, 3):
            threshold = firing_threshold(trace, patience)
            assert fires(trace, threshold * 1.0001, patience) is None
            if threshold > 1.0:
                assert fires(trace, threshold * 0.9999, patience) is not None
