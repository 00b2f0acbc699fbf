"""sweeps.tune: Optuna LR search over run folders, resumable, with no trial left RUNNING.

Trials run a stub trainer (the `gat.train` command line and run-folder files, no torch) whose
metric is a known function of the LR, so a search takes seconds; one slow test drives the local
executor and kills the driver mid-search.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from analysis.load import load_results
from sweeps import lease as leases
from sweeps import manifest, plan, tune
from sweeps.spec import Point, expand

ROOT = Path(__file__).resolve().parent.parent

STUB = textwrap.dedent('''
    """Stub of gat.train for LR-search tests: fd_fmnist = (log10 lr - log10 lr*)^2 + 1 + 10/step
    with lr* = 1e-3 * 64 / width; it diverges above 8 lr*. Resumes from its last stats line."""
    import json, math, os, sys, time
    from pathlib import Path
    import yaml

    def write(path, data):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    cfg = yaml.safe_load(open(sys.argv[1]))
    run = Path(sys.argv[sys.argv.index("--out") + 1])
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    lr, width = cfg["train"]["base_lr"], cfg["model"]["width"]
    best = 1e-3 * 64 / width
    stats = run / "stats.jsonl"
    lines = stats.read_text().splitlines() if stats.exists() else []
    step = json.loads(lines[-1])["step"] if lines else 0
    delay = float(os.environ.get("STUB_STEP_S", "0"))
    while step < cfg["train"]["steps"]:
        write(run / "status.json", {"state": "running", "step": step, "reason": None})
        time.sleep(delay)
        step += 1
        if lr > 8 * best and step >= 3:
            write(run / "status.json", {"state": "diverged", "step": step, "reason": "non-finite loss_g"})
            sys.exit(0)
        if step % cfg["eval"]["every"] == 0:
            fd = (math.log10(lr) - math.log10(best)) ** 2 + 1 + 10 / step
            with open(stats, "a") as out:
                out.write(json.dumps({"step": step, "loss_g": 1.0, "metrics": {"fd_fmnist": fd}}) + "\\n")
    write(run / "status.json", {"state": "completed", "step": step, "reason": None})
''')


@pytest.fixture
def stub(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Jobs run the stub (found through PYTHONPATH, which jobs inherit)."""
    folder = tmp_path_factory.mktemp("stub")
    (folder / "tunestub.py").write_text(STUB)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("GATSCALE_TRAINER", "tunestub")
    return folder


def search_file(tmp_path: Path, widths: list[int], **search: object) -> Path:
    path = tmp_path / "lrs.yaml"
    path.write_text(yaml.safe_dump({
        "base": {"model": {"width": 32, "depth": 2, "heads": 2, "patch": 2}, "mng": {"levels": 2},
                 "train": {"steps": 20, "lr_rule": "constant"}, "eval": {"every": 10}, "logging": {"wandb": "off"}},
        "axes": {"model.width": widths},
        "resources": {"timeout_min": 10},
        "executor": {"kind": "debug", "lease_stale_s": 3, "lease_heartbeat_s": 0.5},
        "search": {"low": 1e-4, "high": 1e-1, "n_trials": 2, "parallel": 1, "poll_s": 0.2,
                   "n_startup_trials": 2, **search},
    }))
    return path


def studies(out: Path) -> dict[str, optuna.Study]:
    storage = tune.open_storage(out, "journal")
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)}


def test_search_resumes_settles_stale_trials_and_reports_best(tmp_path: Path, stub: Path) -> None:
    out = tmp_path / "study"
    grid = search_file(tmp_path, [32, 64])
    assert tune.main([str(grid), "--out", str(out)]) == 0
    first = studies(out)
    assert sorted(first) == ["lrs[model.width=32]", "lrs[model.width=64]"]
    assert all(len(s.trials) == 2 for s in first.values())

    # A driver that died mid-search leaves RUNNING trials: one whose run finished meanwhile,
    # one whose run never did.
    study = first["lrs[model.width=32]"]
    done = study.trials[0]
    for lr, run_dir in ((done.params["train.base_lr"], done.user_attrs["run_dir"]), (2e-3, str(out / "runs" / "gone"))):
        study.enqueue_trial({"train.base_lr": lr})
        stale = study.ask()
        stale.suggest_float("train.base_lr", 1e-4, 1e-1, log=True)
        stale.set_user_attr("run_dir", run_dir)
    recovered, lost = study.trials[-2].number, study.trials[-1].number

    assert tune.main([str(grid), "--out", str(out), "--n-trials", "4"]) == 0
    after = studies(out)
    for s in after.values():
        assert not s.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
        assert len(s.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) >= 4
    trials = after["lrs[model.width=32]"].trials
    assert trials[recovered].state == TrialState.COMPLETE and trials[recovered].value == done.value
    assert trials[lost].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == lost]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params["train.base_lr"] == 2e-3

    best = {row["model.width"]: row for row in json.loads((out / "best_lr.json").read_text())}
    assert set(best) == {32, 64}
    for width, row in best.items():
        assert row["effective_lr"] == row["best_lr"]  # the constant rule: base LR is the LR
        assert row["best_value"] == min(t.value for t in after[row["study"]].trials
                                        if t.state == TrialState.COMPLETE and math.isfinite(t.value))
    assert (out / "best_lr.csv").read_text().splitlines()[0].startswith("study,model.width")

    # The study folder reads like a sweep: every trial's run is in the manifest.
    table = load_results([out])
    assert set(table["train.base_lr"].dropna()) >= {2e-3, done.params["train.base_lr"]}


def test_diverged_runs_score_infinity_and_bad_metric_fails(tmp_path: Path, stub: Path) -> None:
    out = tmp_path / "study"
    grid = search_file(tmp_path, [64], low=5e-2, high=9e-2, n_trials=1)  # far above 8 lr*: diverges
    assert tune.main([str(grid), "--out", str(out)]) == 0
    [study] = studies(out).values()
    assert study.trials[0].value == math.inf
    assert json.loads((out / "best_lr.json").read_text())[0]["best_lr"] is None

    grid = search_file(tmp_path, [64], metric="fid", max_failures=2, low=1e-3, high=2e-3)
    assert tune.main([str(grid), "--out", str(tmp_path / "other")]) == 1
    trials = list(studies(tmp_path / "other").values())[0].trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert trials[0].user_attrs["fail_reason"] == "no 'fid' in stats.jsonl"


def test_poll_prunes_a_bad_trial(tmp_path: Path) -> None:
    grid, search = tune.load_search(search_file(tmp_path, [64], pruner_startup_trials=1))
    tuner = tune.Tuner(grid, search, tmp_path / "study", "local")
    [study] = tuner.studies
    for value in (1.0, 1.2):
        study.add_trial(optuna.create_trial(
            params={"train.base_lr": 1e-3}, distributions={"train.base_lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)},
            value=value, intermediate_values={10: value}))
    trial = study.ask()
    trial.suggest_float("train.base_lr", 1e-4, 1e-1, log=True)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "status.json").write_text(json.dumps({"state": "running", "step": 10}))
    (run_dir / "stats.jsonl").write_text(json.dumps({"step": 10, "metrics": {"fd_fmnist": 50.0}}) + "\n")

    class QueuedJob:  # never started: cancelling it is a no-op
        job_id = "0"

        def done(self) -> bool:
            return False

    assert tuner.poll(tune.InFlight(study, trial, QueuedJob(), run_dir, set()))
    assert study.trials[-1].state == TrialState.PRUNED and study.trials[-1].intermediate_values == {10: 50.0}


def colliding_lrs(grid: object, count: int) -> list[float]:
    """`count` LRs whose run ids share their first hex digit (17 candidates: two must)."""
    [point] = expand(grid)
    by_digit: dict[str, list[float]] = {}
    for lr in (1e-3 * 1.1 ** i for i in range(17 * count)):
        flat = plan.effective_flat(grid, Point({**point.coords, tune.PARAM: lr}, {**point.overrides, tune.PARAM: lr}))
        by_digit.setdefault(plan.identity_digest(flat).hex()[0], []).append(lr)
    return max(by_digit.values(), key=len)[:count]


def test_trials_whose_short_ids_collide_get_their_own_folders(tmp_path: Path, stub: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # As a plan's second colliding point does, the second trial gets the 16-digit id.
    monkeypatch.setattr(plan, "ID_LENGTH", 1)  # 16 possible short ids
    out = tmp_path / "study"
    path = search_file(tmp_path, [64], n_trials=2)
    grid, _ = tune.load_search(path)
    lrs = colliding_lrs(grid, 2)
    out.mkdir()
    study = optuna.create_study(storage=tune.open_storage(out, "journal"), study_name="lrs[model.width=64]")
    for lr in lrs:  # asked first, in this order
        study.enqueue_trial({tune.PARAM: lr})
    assert tune.main([str(path), "--out", str(out)]) == 0
    trials = studies(out)["lrs[model.width=64]"].trials
    assert [t.params[tune.PARAM] for t in trials] == lrs and all(t.state == TrialState.COMPLETE for t in trials)
    folders = [Path(t.user_attrs["run_dir"]) for t in trials]
    assert folders[0] != folders[1] and [len(f.name.rsplit("-", 1)[1]) for f in folders] == [1, plan.COLLISION_ID_LENGTH]
    for folder, lr in zip(folders, lrs):
        assert yaml.safe_load((folder / "config.yaml").read_text())["train"]["base_lr"] == lr
    # one manifest entry per run (entries are keyed by run id: one shared id would merge the two)
    assert sorted(Path(r["dir"]).name for r in manifest.read(out)["runs"]) == sorted(f.name for f in folders)


def test_a_later_driver_keeps_the_recorded_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The runs an earlier driver recorded keep their ids (a re-asked LR resumes its folder), and a
    # new LR colliding with one of them gets the long id, though this driver never placed them.
    monkeypatch.setattr(plan, "ID_LENGTH", 1)
    grid, search = tune.load_search(search_file(tmp_path, [64]))
    out = tmp_path / "study"
    lrs = colliding_lrs(grid, 3)
    first = tune.Tuner(grid, search, out, "debug")
    [point] = first.points
    runs = [first.run_for(point, lr) for lr in lrs[:2]]
    assert [len(r.run_id) for r in runs] == [1, plan.COLLISION_ID_LENGTH]
    assert first.run_for(point, lrs[0]).dir == runs[0].dir
    manifest.update(out, lambda data: manifest.merge_runs(data, [r.manifest_entry() for r in runs]))
    later = tune.Tuner(grid, search, out, "debug")
    assert [later.run_for(point, lr).run_id for lr in lrs[:2]] == [r.run_id for r in runs]
    new = later.run_for(point, lrs[2])
    assert len(new.run_id) == plan.COLLISION_ID_LENGTH and new.dir not in {r.dir for r in runs}


def test_one_driver_per_study_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    held = leases.acquire(out / tune.DRIVER_LEASE, None, stale_s=60, heartbeat_s=1)
    try:
        assert tune.main([str(search_file(tmp_path, [64])), "--out", str(out)]) == 2
    finally:
        held.release()
    assert "another sweeps.tune driver" in capsys.readouterr().err
    assert not (out / tune.JOURNAL).exists()


def test_search_file_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tune.main([str(search_file(tmp_path, [64], colour="red")), "--out", str(tmp_path / "x")]) == 2
    assert "search: unknown key 'colour'" in capsys.readouterr().err
    assert tune.main([str(search_file(tmp_path, [64], low=1e-2, high=1e-3))]) == 2
    assert "need 0 < low < high" in capsys.readouterr().err
    path = search_file(tmp_path, [64])
    data = yaml.safe_load(path.read_text())
    data["set"] = {"train.base_lr": 1e-3}
    path.write_text(yaml.safe_dump(data))
    assert tune.main([str(path)]) == 2
    assert "train.base_lr is what the search chooses" in capsys.readouterr().err
    assert tune.load_search("lr_search.yaml")[1].storage == "journal"  # the bundled file parses


@pytest.mark.slow
def test_local_executor_survives_a_killed_driver(tmp_path: Path, stub: Path) -> None:
    out = tmp_path / "study"
    grid = search_file(tmp_path, [64], n_trials=3, parallel=2)
    data = yaml.safe_load(grid.read_text())
    data["executor"]["kind"] = "local"
    grid.write_text(yaml.safe_dump(data))
    env = {**os.environ, "STUB_STEP_S": "0.1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ["PYTHONPATH"]])}
    command = [sys.executable, "-m", "sweeps.tune", str(grid), "--out", str(out)]
    driver = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and not any(
            s.get_trials(states=(TrialState.RUNNING,)) for s in (studies(out).values() if (out / tune.JOURNAL).exists() else [])):
        time.sleep(0.5)
    driver.send_signal(signal.SIGKILL)  # no cleanup at all: trials stay RUNNING, the lease goes stale
    driver.wait()
    assert any(s.get_trials(states=(TrialState.RUNNING,)) for s in studies(out).values())

    time.sleep(3.5)  # the dead driver's lease goes stale after lease_stale_s = 3
    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "re-enqueued" in resumed.stdout or "recovered" in resumed.stdout
    [study] = studies(out).values()
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) >= 3
